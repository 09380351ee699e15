"""ACCM and the CNN baseline: shapes, gradients, the SE block, and learning the synthetic set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.joints import fill_missing
from datasets.representations import build_representation, representation_channels
from datasets.synthetic_gesture import GESTURE_CLASSES, generate_gestures
from models import build_model
from models.accm import SqueezeExcite, accm, cnn


@pytest.mark.parametrize("factory", [accm, cnn])
def test_shapes_and_split(factory):
    torch.manual_seed(0)
    m = factory(num_classes=5, in_channels=6, width=8)
    x = torch.randn(3, 6, 15, 21)
    feats = m.forward_features(x)
    assert feats.shape == (3, 8, 8, 11)
    pooled = m.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(pooled, feats.mean(dim=(2, 3)))  # global average pool
    torch.testing.assert_close(m.forward_head(feats), m.fc(pooled))
    logits = m(x)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    assert torch.equal(logits, m.forward_head(feats))
    assert m.config.num_classes == 5 and m.config.in_channels == 6


@pytest.mark.parametrize("factory", [accm, cnn])
def test_every_parameter_gets_a_finite_gradient(factory):
    torch.manual_seed(0)
    m = factory(num_classes=4, in_channels=6, width=16)
    x = torch.randn(4, 6, 12, 20)
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_accm_is_cnn_plus_attention_branch():
    a = accm(num_classes=3, in_channels=4, width=32, se_reduction=8)
    c = cnn(num_classes=3, in_channels=4, width=32)
    extra = {k for k, _ in a.named_parameters()} - {k for k, _ in c.named_parameters()}
    assert extra and all(k.startswith("attention.") for k in extra)
    assert a.attention.depthwise.groups == 4
    assert a.attention.se.fc1.out_features == 4  # 32 // 8
    assert accm(3, 4, width=8).attention.se.fc1.out_features == 1  # at least one hidden unit
    built = build_model("accm", num_classes=3, in_channels=4, width=32, se_reduction=8)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in a.state_dict().items()
    }


def test_squeeze_excite_matches_formula():
    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=4)
    x = torch.randn(2, 8, 5, 3)
    gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean(dim=(2, 3))))))  # (2, 8)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])


def _representations(items, size, length):
    seqs = [fill_missing(s).joints for _, s in items]
    T = max(len(q) for q in seqs)
    padded = np.zeros((len(seqs), T) + seqs[0].shape[1:], np.float32)
    for i, q in enumerate(seqs):
        padded[i, : len(q)] = q
    lengths = torch.tensor([len(q) for q in seqs])
    return build_representation(torch.from_numpy(padded), lengths, "timeline", size, length)


@pytest.mark.timeout(120)
def test_accm_learns_synthetic_gestures_on_held_out_subjects():
    items = generate_gestures(n_subjects=6, per_class=4, seed=0)
    x = _representations(items, size=24, length=32)
    assert x.shape[1] == representation_channels("timeline", 25)
    y = torch.tensor([GESTURE_CLASSES.index(item.label) for item, _ in items])
    test = torch.tensor([item.subject in ("s04", "s05") for item, _ in items])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: two threads on a busy 2-core box are slower
    try:
        torch.manual_seed(0)
        model = accm(len(GESTURE_CLASSES), x.shape[1], width=16, se_reduction=4)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        xtr, ytr = x[~test], y[~test]
        for _ in range(6):
            model.train()
            for idx in torch.randperm(len(xtr)).split(16):
                loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    chance = 1 / len(GESTURE_CLASSES)
    assert acc > 2 * chance, f"held-out accuracy {acc:.3f} (chance {chance:.3f})"
