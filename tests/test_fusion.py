"""Late fusion: the rule against a slow reference, weight choice, and the paired-set experiment.

The integration test runs the real protocol (``distributed.fusion.run_fusion``): both branches are
trained through Ray Train on inner splits and outer training folds of a paired synthetic set, w is
chosen on inner validation predictions and the outer test folds are scored. What it proves: on data
where each modality alone is capped at 50% (by construction), the fused model, with a weight chosen
without the test fold, beats both branches on held-out subjects. It uses 2 of 3 outer folds and 1
of 2 inner splits, tiny models and few epochs (one Ray Train fit per branch).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distributed import fusion
from tests.conftest import stored_protocol


def _slow_log_fusion(pf, pb, w):
    out = np.zeros_like(pf)
    for n in range(pf.shape[0]):
        for c in range(pf.shape[1]):
            out[n, c] = (pf[n, c] + fusion.EPS) ** w * (pb[n, c] + fusion.EPS) ** (1 - w)
        out[n] /= out[n].sum()
    return out


def _random_probs(rng, n, k):
    p = rng.gamma(0.5, size=(n, k))
    return p / p.sum(1, keepdims=True)


def test_fusion_rules_match_slow_references():
    rng = np.random.default_rng(0)
    pf, pb = _random_probs(rng, 7, 4), _random_probs(rng, 7, 4)
    for w in (0.0, 0.3, 1.0):
        np.testing.assert_allclose(fusion.fuse(pf, pb, w, "log"), _slow_log_fusion(pf, pb, w),
                                   rtol=1e-10)  # fmt: skip
        np.testing.assert_allclose(fusion.fuse(pf, pb, w, "linear"), w * pf + (1 - w) * pb)
    np.testing.assert_allclose(fusion.fuse(pf, pb, 1.0), pf, atol=1e-5)
    with pytest.raises(ValueError):
        fusion.fuse(pf, pb, 0.5, "max")


def test_weight_choice_needs_both_branches_when_each_sees_half():
    # 4 classes; the face knows the pair {0,1} / {2,3}, the body the member {0,2} / {1,3}
    y = np.repeat(np.arange(4), 5)
    face = np.array([[0.45, 0.45, 0.05, 0.05] if c < 2 else [0.05, 0.05, 0.45, 0.45] for c in y])
    body = np.array(
        [[0.45, 0.05, 0.45, 0.05] if c % 2 == 0 else [0.05, 0.45, 0.05, 0.45] for c in y]
    )
    w, table = fusion.choose_weight(y, face, body, "log")
    by_w = {r["w"]: r for r in table}
    assert by_w[0.0]["uar"] <= 0.5 and by_w[1.0]["uar"] <= 0.5
    assert by_w[w]["uar"] == 1.0 == max(r["uar"] for r in table)
    assert 0.0 < w < 1.0 and w == 0.5  # ties go to the weight nearest 0.5


def test_pairing_aligns_by_id_and_checks_labels():
    pa, pb = np.eye(3), np.eye(3)[::-1]
    ids, y, a, b = fusion.pair(["x", "y", "z"], [0, 1, 2], pa, ["z", "x"], [2, 0], pb[:2])
    assert ids == ["x", "z"] and y.tolist() == [0, 2]
    np.testing.assert_array_equal(a, pa[[0, 2]])
    np.testing.assert_array_equal(b, pb[[1, 0]])
    with pytest.raises(ValueError, match="disagree"):
        fusion.pair(["x"], [0], pa[:1], ["x"], [1], pb[:1])
    with pytest.raises(ValueError, match="share no id"):
        fusion.pair(["x"], [0], pa[:1], ["q"], [0], pb[:1])


@pytest.fixture(scope="module")
def paired_shards(tmp_path_factory, ray_session):
    from datasets.synthetic_paired import write_paired_set
    from distributed import preprocess

    root = tmp_path_factory.mktemp("paired")
    write_paired_set(root / "raw", n_subjects=6, per_class=2, seed=0, size=96, n_frames=8)
    out = {}
    for kind, sub, extra in (("facial", "faces", ["--size", "32"]), ("gesture", "gestures", [])):
        out[kind] = str(root / f"{kind}-shards")
        argv = [kind, "--source", str(root / "raw" / sub), "--out", out[kind], "--folds", "3",
                "--inner-folds", "2", *extra]  # fmt: skip
        assert preprocess.main(argv) == 0
    fm, gm = (json.loads((Path(out[k]) / "manifest.json").read_text()) for k in out)
    assert stored_protocol(out["facial"]) == stored_protocol(out["gesture"])
    assert fm["classes"] == gm["classes"]
    assert fm["counts"]["centre_cropped"] == 0
    return out


@pytest.mark.slow  # two Ray Train fits per fold; covered by benchmarks/fusion.py (pytest -m slow)
@pytest.mark.timeout(1200)
def test_fused_model_beats_each_branch_on_the_paired_set(paired_shards, tmp_path, ray_session):
    from distributed.core.config import default_config

    # head="p3": the facial score is the LSTM over clip features, the head that learns first; the
    # paper's fused score (mostly p2) needs far more than the few epochs a test can afford.
    facial = default_config("facial", model="resnet_tlstm", clips=2, frames=2, lstm1=16,
                            lstm2=8, dropout=0.0, head="p3", lr=0.05, batch_size=8,
                            epochs=10)  # fmt: skip
    gesture = default_config("gesture", rep_size=32, rep_length=48, width=16, se_reduction=4,
                             batch_size=8, lr=1e-2, epochs=10)  # fmt: skip
    report = fusion.run_fusion(facial, gesture, paired_shards["facial"], paired_shards["gesture"],
                               folds=2, inner=1, storage_path=str(tmp_path), name="fz")  # fmt: skip
    FOLDS = stored_protocol(paired_shards["facial"])
    assert [f["outer"] for f in report["folds"]] == [0, 1]
    for f in report["folds"]:
        # scored on exactly the outer test fold; w chosen on the inner validation split
        assert sorted(f["test_ids"]) == FOLDS["outer"][f["outer"]]["test"]
        assert f["inner_n"] == len(FOLDS["outer"][f["outer"]]["inner"][0]["val"])
        assert 0.0 <= f["w"] <= 1.0
    s = {k: report["summary"][k]["pooled"] for k in ("face", "body", "fused")}
    print(fusion.markdown(report))
    # each modality alone is capped near 0.5 by construction; fusion must beat both clearly
    assert s["face"]["uar"] <= 0.7 and s["body"]["uar"] <= 0.7, s
    assert s["fused"]["uar"] >= max(s["face"]["uar"], s["body"]["uar"]) + 0.1, s
    assert s["fused"]["war"] > max(s["face"]["war"], s["body"]["war"]), s


def _fake_run(root, cfg, shards_root, params: dict, epochs: int, outers) -> str:
    """A finished tune run's folder as fusion reads it: best_config.json and final models."""
    import torch

    from datasets.manifest import read_manifest
    from distributed.training.checkpoint import TrainedOn, save_model
    from distributed.training.launch import data_info
    from distributed.training.steps import build

    data = data_info(read_manifest(shards_root))
    best = {
        "base_config": cfg.to_dict(),
        "search_space": {},
        "per_outer_fold": [{"outer": k, "params": params, "epochs": epochs} for k in outers],
    }
    (root / "results").mkdir(parents=True)
    (root / "results" / "best_config.json").write_text(json.dumps(best))
    (root / "models").mkdir()
    for k in outers:
        torch.manual_seed(k)
        model = build(cfg.override(**params), data).eval()
        save_model(str(root / "models" / f"outer{k}.pt"), model, cfg.override(**params), data,
                   TrainedOn(k, None, "subjects"), "t")  # fmt: skip
    return str(root)


@pytest.mark.timeout(600)
def test_fusion_of_tuned_runs_uses_their_configs_and_final_models(paired_shards, tmp_path,
                                                                  ray_session, capfd):  # fmt: skip
    """Per outer fold, each branch's inner predictions come from the config its search chose,
    and its test predictions from the search's final model, not from a retrain."""
    from datasets.manifest import read_manifest
    from distributed.core.config import default_config
    from distributed.inference.evaluation import predict_fold
    from distributed.training.checkpoint import load_model

    facial = default_config("facial", model="resnet_tlstm", clips=2, frames=2, lstm1=8, lstm2=4,
                            epochs=1, batch_size=8)  # fmt: skip
    gesture = default_config("gesture", rep_size=16, rep_length=16, width=8, se_reduction=4,
                             epochs=1, batch_size=8)  # fmt: skip
    runs = {
        "facial": _fake_run(tmp_path / "rf", facial, paired_shards["facial"], {"lr": 0.02}, 1, [0]),
        "gesture": _fake_run(tmp_path / "rg", gesture, paired_shards["gesture"], {"width": 4}, 1,
                             [0]),
    }  # fmt: skip
    # through the CLI, as the README's walk-through runs it (its configs come from the runs)
    code = fusion.main(["--facial-shards", paired_shards["facial"], "--gesture-shards",
                        paired_shards["gesture"], "--facial-run", runs["facial"], "--gesture-run",
                        runs["gesture"], "--folds", "1", "--inner", "1", "--storage",
                        str(tmp_path / "s"), "--name", "ft"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "s" / "ft" / "fusion.json").read_text())
    console = capfd.readouterr().out
    # our progress lines and the report reach the terminal; Ray's and the workers' go to the log
    assert "training the body branch" in console and "| fused |" in console, console
    assert "RayTrainWorker" not in console and "TrainController" not in console, console
    (log,) = (tmp_path / "s" / "ft" / "logs").glob("fusion-*.log")
    assert f"log: {log}" in console
    assert report["gesture"]["model"]["width"] == 4 and report["facial"]["lr"] == 0.02
    (fold,) = report["folds"]
    protocol = stored_protocol(paired_shards["facial"])
    assert sorted(fold["test_ids"]) == protocol["outer"][0]["test"]
    # the body's test score is the final model's own evaluation on the outer test fold
    mf = load_model(str(tmp_path / "rg" / "models" / "outer0.pt"))
    ids, y, probs = predict_fold(mf, paired_shards["gesture"], protocol["outer"][0]["test"])
    pooled = fusion.scores(y, probs, len(read_manifest(paired_shards["gesture"]).classes))
    assert fold["body"]["uar"] == pytest.approx(pooled["uar"])
    assert not (tmp_path / "s" / "ft-gesture" / "split-models" / "split1.pt").exists()
    # per-item predictions of the three scores, and intervals beside mean ± std (issue 27)
    import csv

    rows = list(csv.DictReader((tmp_path / "s" / "ft" / "predictions.csv").open()))
    assert sorted(r["id"] for r in rows) == protocol["outer"][0]["test"]
    classes = read_manifest(paired_shards["gesture"]).classes
    body = {r["id"]: [float(r[f"body_p_{c}"]) for c in classes] for r in rows}
    np.testing.assert_allclose([body[i] for i in ids], probs, atol=1e-5)
    for key in ("face", "body", "fused"):
        lo, hi = report["intervals"][key]["uar"]
        assert lo <= report["summary"][key]["uar_mean"] <= hi
    text = (tmp_path / "s" / "ft" / "fusion.md").read_text()
    assert "95% CI UAR" in text and "Fused minus the better branch" in text
