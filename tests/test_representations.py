"""Joint-trajectory representations against slow per-frame, per-joint Python references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.representations import (
    build_representation,
    representation_channels,
    resample_indices,
)

S, L = 16, 12


# ---------------------------------------------------------------- slow references
def ref_indices(n: int, length: int) -> list[int]:
    """floor(linspace(0, n, L, endpoint=False)) computed exactly (i * n / L), or repeat-last."""
    if n >= length:
        return [i * n // length for i in range(length)]
    return [min(i, n - 1) for i in range(length)]


def ref_pixels(frame: np.ndarray, size: int, margin: int):
    """One frame (J, 2) -> list of (x, y) ints or None for a NaN joint, in float32 arithmetic."""
    valid = [j for j in range(len(frame)) if np.isfinite(frame[j]).all()]
    if not valid:
        return [None] * len(frame)
    lo = [min(np.float32(frame[j, a]) for j in valid) for a in range(2)]
    hi = [max(np.float32(frame[j, a]) for j in valid) for a in range(2)]
    extent = max(hi[0] - lo[0], hi[1] - lo[1])
    scale = np.float32(size - margin) / extent if extent > 0 else np.float32(0)
    out = []
    for j in range(len(frame)):
        if j not in valid:
            out.append(None)
            continue
        p = [int((np.float32(frame[j, a]) - lo[a]) * scale) for a in range(2)]
        out.append(tuple(min(max(v, 0), size - 1) for v in p))
    return out


def ref_build(seqs, kind, size, length, weight, margin):
    """The reference's loops: per sequence, per resampled frame, per joint, increment the maps."""
    J = seqs[0].shape[1]
    outs = []
    for seq in seqs:
        if kind == "timeline":
            maps = np.zeros((2 * J, size, length), np.float32)
        elif kind == "timeline_single":
            maps = np.zeros((2, size, length), np.float32)
        else:
            maps = np.zeros((J, size, size), np.float32)
        for t, src in enumerate(ref_indices(len(seq), length)):
            pixels = ref_pixels(seq[src, :, :2].astype(np.float32), size, margin)
            for j, pix in enumerate(pixels):
                if pix is None:
                    continue
                x, y = pix
                w = j + 1 if weight == "index" else 1
                if kind == "timeline":
                    maps[2 * j, x, t] += w
                    maps[2 * j + 1, y, t] += w
                elif kind == "timeline_single":
                    maps[0, x, t] += w
                    maps[1, y, t] += w
                else:
                    maps[j, y, x] += t / (length - 1) if length > 1 else 1.0
        outs.append(maps)
    return np.stack(outs)


def make_batch(lengths, J=7, D=2, seed=0, pad_value=1e6):
    """Random sequences with some NaN joints, a frame of coinciding joints, a frame all NaN."""
    rng = np.random.default_rng(seed)
    seqs = []
    for n in lengths:
        q = rng.uniform(-50, 400, size=(n, J, D)).astype(np.float32)
        q[rng.uniform(size=(n, J)) < 0.1] = np.nan
        if n > 3:
            q[1] = np.arange(7, 7 + D)  # every joint at the same place: scale 0
            q[2] = np.nan  # nobody in this frame
        seqs.append(q)
    padded = np.full((len(lengths), max(lengths), J, D), pad_value, np.float32)
    for i, q in enumerate(seqs):
        padded[i, : len(q)] = q
    return seqs, torch.from_numpy(padded), torch.tensor(lengths)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", ["timeline", "timeline_single", "potion"])
@pytest.mark.parametrize("weight", ["index", "one"])
@pytest.mark.parametrize("margin", [5, 0])
def test_matches_reference_on_mixed_lengths(kind, weight, margin):
    # T = 1, T < L, T = L and T > L in one padded batch; the padding (1e6) must never be read.
    seqs, padded, lengths = make_batch([1, 5, L, 31, 2 * L])
    got = build_representation(padded, lengths, kind, S, L, weight=weight, margin=margin)
    want = ref_build(seqs, kind, S, L, weight, margin)
    assert got.dtype == torch.float32 and got.device == padded.device
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["timeline", "timeline_single", "potion"])
def test_uses_only_x_and_y(kind):
    seqs, padded, lengths = make_batch([9, 4], D=3, seed=1)
    got = build_representation(padded, lengths, kind, S, L)
    want = ref_build(seqs, kind, S, L, "index", 5)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_length_one_output():
    seqs, padded, lengths = make_batch([1, 6], seed=2)
    for kind in ("timeline", "timeline_single", "potion"):
        got = build_representation(padded, lengths, kind, S, 1)
        want = ref_build(seqs, kind, S, 1, "index", 5)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    potion = build_representation(padded, lengths, "potion", S, 1)
    assert potion[0].sum() == 7  # L = 1: the single frame has weight 1, one hit per joint


def test_timeline_mass_and_margin():
    # Without NaNs every (joint, axis, frame) column holds exactly the joint weight, and the
    # 5-unit margin keeps every pixel in [0, S - 5].
    rng = np.random.default_rng(3)
    q = torch.from_numpy(rng.normal(size=(2, 20, 4, 2)).astype(np.float32))
    out = build_representation(q, torch.tensor([20, 13]), "timeline", S, L)
    col = out.sum(dim=2)  # (B, 2J, L)
    w = torch.arange(1, 5).repeat_interleave(2).float()
    assert torch.equal(col, w.view(1, 8, 1).expand(2, 8, L))
    assert out[:, :, S - 4 :, :].abs().sum() == 0
    # The extreme joint of the larger axis lands on S - 5 (S - 6 if float rounding falls short).
    assert out[:, :, S - 6 : S - 4, :].sum() > 0


def test_resample_indices_match_floored_linspace():
    for n in range(1, 90):
        for length in range(1, 40):
            got = resample_indices(torch.tensor([n]), length)[0].tolist()
            assert got == ref_indices(n, length)
            if n >= length:
                # Every i*n/L is an integer or at least 1/L away from one, so a 1e-6 nudge undoes
                # linspace's rounding without crossing an integer.
                lin = np.floor(np.linspace(0, n, length, endpoint=False) + 1e-6).astype(int)
                assert got == lin.tolist()
    # Where floating-point linspace lands just below a whole number we keep the exact frame.
    assert resample_indices(torch.tensor([122]), 14)[0, 7] == 61


def test_rising_and_falling_differ_only_in_time_order():
    rng = np.random.default_rng(4)
    q = rng.uniform(0, 100, size=(L, 5, 2)).astype(np.float32)
    batch = torch.from_numpy(np.stack([q, q[::-1].copy()]))  # (2, L, 5, 2)
    out = build_representation(batch, torch.tensor([L, L]), "timeline", S, L)
    assert not torch.equal(out[0], out[1])
    assert torch.equal(out[0], out[1].flip(-1))


def test_channels_and_errors():
    assert representation_channels("timeline", 25) == 50
    assert representation_channels("timeline_single", 25) == 2
    assert representation_channels("potion", 25) == 25
    _, padded, lengths = make_batch([4, 3])
    for kind in ("timeline", "timeline_single", "potion"):
        out = build_representation(padded, lengths, kind, S, L)
        assert out.shape[1] == representation_channels(kind, 7)
    with pytest.raises(ValueError, match="kind"):
        build_representation(padded, lengths, "nope", S, L)
    with pytest.raises(ValueError, match="weight"):
        build_representation(padded, lengths, "timeline", S, L, weight="nope")
    with pytest.raises(ValueError, match="exceeds"):
        build_representation(padded, torch.tensor([4, 9]), "timeline", S, L)
    with pytest.raises(ValueError, match="at least one frame"):
        build_representation(padded, torch.tensor([4, 0]), "timeline", S, L)
    with pytest.raises(ValueError, match="margin"):
        build_representation(padded, lengths, "timeline", 5, L)
