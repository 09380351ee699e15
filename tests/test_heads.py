"""The predicting head and the p1 loss are configuration: metrics, prediction, export follow it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from branches import DataInfo
from distributed import export
from distributed.core.config import default_config
from distributed.training.steps import EpochStats, build, head_probs, loss_of, predict_probs

pytestmark = pytest.mark.timeout(120)

SMALL = dict(clips=2, frames=2, lstm1=8, lstm2=4)


def test_head_must_exist_for_the_branch():
    for head in ("fused", "p1", "p2", "p3"):
        assert default_config("facial", head=head).head == head
    with pytest.raises(ValueError, match="head must be one of"):
        default_config("facial", head="p4")
    with pytest.raises(ValueError, match="head must be one of"):
        default_config("gesture", head="p3")


def test_epoch_metrics_score_the_configured_head():
    stats = EpochStats(("p1", "p2", "p3", "fused"), 3)
    y = torch.tensor([0, 1, 2, 2])
    right = F.one_hot(y, 3).float()
    wrong = F.one_hot((y + 1) % 3, 3).float()
    # p3 right on every item, fused right on none, p1 on the first two
    outputs = {"p1": torch.cat([right[:2], wrong[2:]]), "p2": wrong, "p3": right, "fused": wrong}
    stats.add(1.0, outputs, y)
    by_head = {h: stats.metrics("val", h) for h in ("p1", "p3", "fused")}
    assert by_head["p3"]["val_war"] == 1.0 and by_head["p3"]["val_uar"] == 1.0
    assert by_head["fused"]["val_war"] == 0.0 and by_head["fused"]["val_uar"] == 0.0
    assert by_head["p1"]["val_war"] == 0.5
    assert by_head["p1"]["val_uar"] == pytest.approx((1 + 1 + 0) / 3)
    # the per-head entries do not depend on the choice
    assert by_head["p1"]["val_p3_war"] == by_head["fused"]["val_p3_war"] == 1.0
    assert stats.metrics("val")["val_war"] == 0.0  # default: the paper's fused score


def test_head_probs_and_predict_probs_follow_the_head():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 2, 2, 3, 32, 32), dtype=torch.uint8)
    for head in ("fused", "p1", "p2", "p3"):
        cfg = default_config("facial", head=head, **SMALL)
        torch.manual_seed(1)
        model = build(cfg, DataInfo(tuple("abcd"), {})).eval()
        out = model(x)
        probs = predict_probs(cfg, model, x)
        assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
        # p1 is already a distribution: passed through; the others are normalised with a softmax
        expect = out["p1"] if head == "p1" else out[head].softmax(1)
        assert torch.allclose(probs, expect, atol=1e-6)
        assert torch.equal(probs.argmax(1), out[head].argmax(1))
    logits = torch.randn(5, 4)
    assert torch.allclose(head_probs({"fused": logits}, "fused"), logits.softmax(1))


def test_faithful_loss_switch():
    torch.manual_seed(0)
    y = torch.tensor([0, 3, 1])
    p1 = torch.softmax(torch.randn(3, 4), 1)
    outputs = {"p1": p1, "p2": torch.randn(3, 4), "p3": torch.randn(3, 4)}
    rest = F.cross_entropy(outputs["p2"], y) + F.cross_entropy(outputs["p3"], y)
    faithful = loss_of(default_config("facial"), outputs, y)
    proper = loss_of(default_config("facial", faithful_loss=False), outputs, y)
    # reference: cross-entropy on p1 as if it were logits; proper: -log p1[y]
    assert torch.allclose(faithful, F.cross_entropy(p1, y) + rest)
    nll = -torch.log(p1[torch.arange(3), y]).mean()
    assert torch.allclose(proper, nll + rest)
    assert not torch.allclose(faithful, proper)


def test_export_wrapper_returns_the_heads_probabilities():
    cfg = default_config("facial", head="p3", **SMALL)
    torch.manual_seed(0)
    model = build(cfg, DataInfo(tuple("abc"), {})).eval()
    x = torch.randint(0, 256, (2, 2, 2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        probs, p1, p2, p3, fused, total = export.ExportWrapper(model, "facial", cfg.head)(x)
        out = model(x)
    assert torch.allclose(probs, out["p3"].softmax(1))
    assert torch.allclose(fused, out["fused"]) and torch.allclose(p3, out["p3"])
    assert not np.allclose(probs.numpy(), out["fused"].softmax(1).numpy())
