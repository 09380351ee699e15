"""The paper's recipes in one file each, the published baselines' defaults, the "sum" head, the
CNN's faithful loss and the joint normalisation switch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distributed.core.config import ConfigError, default_config, load_config_file
from distributed.search.space import load_space, with_first_point
from distributed.training.steps import EpochStats, head_probs, loss_of, model_inputs

pytestmark = pytest.mark.timeout(120)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _preset(name: str, branch: str):
    f = load_config_file(str(CONFIGS / name), branch)
    return f, default_config(branch, **f.overrides)


def test_presets_hold_the_papers_recipes():
    f, cfg = _preset("paper-ckplus-sistcm.yaml", "facial")
    m = cfg.model
    assert f.protocol == "lists" and m.name == "sistcm"
    assert (m.clips, m.frames, m.lstm1, m.lstm2, m.fusion_weight, m.head) == (5, 2, 1024, 512, 0.2,
                                                                             "fused")  # fmt: skip
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (
        "sgd", 0.005, 0.9, 1e-4, 8, 400)  # fmt: skip
    _, cfg = _preset("paper-ckplus-resnet-tlstm.yaml", "facial")
    assert (cfg.model.name, cfg.model.frames, cfg.model.head, cfg.epochs) == (
        "resnet_tlstm", 3, "sum", 200)  # fmt: skip
    _, cfg = _preset("paper-joints-accm.yaml", "gesture")
    m = cfg.model
    assert (m.name, m.rep_size, m.rep_length, m.width, m.se_reduction, m.normalise) == (
        "accm", 64, 300, 128, 16, "reference")  # fmt: skip
    assert (cfg.optimizer, cfg.lr, cfg.step_size, cfg.gamma, cfg.epochs) == ("adam", 1e-3, 50, 0.1,
                                                                             200)  # fmt: skip
    _, cfg = _preset("paper-joints-cnn.yaml", "gesture")
    assert cfg.model.name == "cnn" and cfg.model.faithful_loss


def test_presets_are_refused_for_the_other_branch_and_with_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="paper-joints-accm.yaml: a preset for the gesture"):
        load_config_file(str(CONFIGS / "paper-joints-accm.yaml"), "facial")
    bad = tmp_path / "p.yaml"
    bad.write_text("branch: facial\nconfig:\n  frame: 3\n")
    with pytest.raises(ConfigError, match=r"p.yaml: config: unknown config keys \['frame'\]"):
        load_config_file(str(bad), "facial")


def test_a_preset_is_the_first_point_of_the_search():
    f, cfg = _preset("paper-ckplus-sistcm.yaml", "facial")
    space = with_first_point(load_space("facial", base_overrides=f.overrides), cfg)
    assert space.start[0] == {"clips": 5, "frames": 2, "lstm1": 1024, "lstm2": 512,
                              "fusion_weight": 0.2, "lr": 0.005, "weight_decay": 1e-4}  # fmt: skip
    other = cfg.override(frames=9)  # not a point of the space: not proposed
    assert with_first_point(load_space("facial"), other).start == load_space("facial").start


def test_the_resnet_baseline_defaults_are_the_published_ones():
    cfg = default_config("facial", model="resnet_tlstm")
    assert (cfg.model.frames, cfg.epochs, cfg.model.head) == (3, 200, "sum")
    mine = default_config("facial", model="resnet_tlstm", frames=2, head="p3")
    assert (mine.model.frames, mine.epochs, mine.model.head) == (2, 200, "p3")
    assert default_config("facial").model.frames == 2  # SISTCM keeps the paper's K = 2


def test_sum_head_scores_and_predicts_with_p1_plus_p2_plus_p3():
    torch.manual_seed(0)
    out = {h: torch.randn(4, 3) for h in ("p1", "p2", "p3")}
    out["p1"] = out["p1"].softmax(1)
    out["fused"] = 0.2 * out["p1"] + 0.8 * out["p2"]
    out["sum"] = out["p1"] + out["p2"] + out["p3"]
    probs = head_probs(out, "sum")
    torch.testing.assert_close(probs, (out["p1"] + out["p2"] + out["p3"]).softmax(1))
    stats = EpochStats(("p1", "p2", "p3", "fused", "sum"), 3)
    y = out["sum"].argmax(1)
    stats.add(1.0, out, y)
    assert stats.metrics("val", "sum")["val_war"] == 1.0


def test_the_cnn_baseline_loss_is_ce_on_its_softmax_when_faithful():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4) * 3, torch.tensor([0, 1, 2, 3, 1])
    out = {"fused": logits}
    cnn = default_config("gesture", model="cnn")
    torch.testing.assert_close(loss_of(cnn, out, y), F.cross_entropy(logits.softmax(1), y))
    plain = default_config("gesture", model="cnn", faithful_loss=False)
    torch.testing.assert_close(loss_of(plain, out, y), F.cross_entropy(logits, y))
    accm = default_config("gesture")  # ACCM: CE on the logits, as the reference
    torch.testing.assert_close(loss_of(accm, out, y), F.cross_entropy(logits, y))


def test_the_normalisation_switch_reaches_the_representation():
    from datasets.representations import build_representation

    torch.manual_seed(0)
    joints = torch.rand(2, 30, 25, 2) * 300 + 10
    batch = {"joints": joints, "lengths": torch.tensor([30, 21])}
    cpu = torch.device("cpu")
    ref = default_config("gesture", rep_size=32, rep_length=20)
    fit = ref.override(normalise="fit")
    a, b = model_inputs(ref, batch, cpu), model_inputs(fit, batch, cpu)
    expect = build_representation(joints, batch["lengths"], "timeline", 32, 20,
                                  normalise="reference")  # fmt: skip
    torch.testing.assert_close(a, expect)
    assert not torch.equal(a, b)
