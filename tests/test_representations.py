"""Joint-trajectory representations against slow per-frame, per-joint Python references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.representations import (
    build_representation,
    normalise_frames,
    representation_channels,
    representation_shape,
    resample_indices,
)

pytestmark = pytest.mark.timeout(120)

S, L = 16, 12
KINDS = ["timeline", "timeline_single", "potion"]


# ---------------------------------------------------------------- slow references
def ref_indices(n: int, length: int) -> list[int]:
    """floor(linspace(0, n, L, endpoint=False)) computed exactly (i * n / L), or repeat-last."""
    if n >= length:
        return [i * n // length for i in range(length)]
    return [min(i, n - 1) for i in range(length)]


def ref_pixels_fit(frame: np.ndarray, size: int, margin: int):
    """Rule "fit": one frame (J, 2) -> list of (x, y) ints or None for a NaN joint (float32)."""
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


def ref_pixels_reference(frame: np.ndarray, size: int, border: int = 5):
    """The paper's per-frame rule, joint by joint in plain Python (ints and Python floats):
    p = int(q); lo = min(p) - 5, hi = max(p) + 5 per axis; scale = min(S / (hi_x - lo_x),
    S / (hi_y - lo_y)); n = int((p - lo) * scale). NaN joints are left out (None)."""
    joints = []
    for j in range(len(frame)):
        x, y = float(frame[j, 0]), float(frame[j, 1])
        joints.append(None if x != x or y != y else (int(x), int(y)))
    seen = [p for p in joints if p is not None]
    if not seen:
        return joints
    lo_x, hi_x = min(p[0] for p in seen) - border, max(p[0] for p in seen) + border
    lo_y, hi_y = min(p[1] for p in seen) - border, max(p[1] for p in seen) + border
    scale = min(size / (hi_x - lo_x), size / (hi_y - lo_y))
    out = []
    for p in joints:
        if p is None:
            out.append(None)
        else:
            out.append((int((p[0] - lo_x) * scale), int((p[1] - lo_y) * scale)))
    return out


def ref_build(seqs, kind, size, length, weight, margin, normalise="reference"):
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
            frame = seq[src, :, :2].astype(np.float32)
            if normalise == "reference":
                pixels = ref_pixels_reference(frame, size, margin)
            else:
                pixels = ref_pixels_fit(frame, size, margin)
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


def make_batch(lengths, J=7, D=2, seed=0, pad_value=1e6, integer=False, holes=True):
    """Random sequences with a frame of coinciding joints and, with ``holes``, some NaN joints
    and a frame all NaN. Coordinates in [-50, 400): negative ones tell truncation toward zero
    from flooring."""
    rng = np.random.default_rng(seed)
    seqs = []
    for n in lengths:
        if integer:
            q = rng.integers(-50, 400, size=(n, J, D)).astype(np.float32)
        else:
            q = rng.uniform(-50, 400, size=(n, J, D)).astype(np.float32)
        if holes:
            q[rng.uniform(size=(n, J)) < 0.1] = np.nan
        if n > 3:
            q[1] = np.arange(7, 7 + D)  # every joint at the same place: scale 0 / range 0
            if holes:
                q[2] = np.nan  # nobody in this frame
        seqs.append(q)
    padded = np.full((len(lengths), max(lengths), J, D), pad_value, np.float32)
    for i, q in enumerate(seqs):
        padded[i, : len(q)] = q
    return seqs, torch.from_numpy(padded), torch.tensor(lengths)


def assert_maps_equal(got: torch.Tensor, want: np.ndarray, kind: str) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    if kind == "potion":  # t / (L - 1) summed in float32 vs Python float: last-bit differences
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    else:  # small whole numbers: exact
        np.testing.assert_array_equal(got.numpy(), want)


# ---------------------------------------------------------------- the reference normalisation
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weight", ["index", "one"])
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_matches_reference_rule_on_mixed_lengths(kind, weight, integer):
    # T = 1, T < L, T = L and T > L in one padded batch; the padding (1e6) must never be read.
    seqs, padded, lengths = make_batch([1, 5, L, 31, 2 * L], integer=integer, seed=int(integer))
    got = build_representation(padded, lengths, kind, S, L, weight=weight)
    assert got.device == padded.device
    assert_maps_equal(got, ref_build(seqs, kind, S, L, weight, 5), kind)
    explicit = build_representation(
        padded, lengths, kind, S, L, weight=weight, normalise="reference"
    )
    assert torch.equal(got, explicit)  # the default


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weight", ["index", "one"])
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_matches_reference_rule_without_missing_joints(kind, weight, integer):
    # Every joint present takes the unmasked path; the padding is NaN and must never be read.
    seqs, padded, lengths = make_batch(
        [1, 5, L, 31, 2 * L], integer=integer, seed=4, holes=False, pad_value=np.nan
    )
    got = build_representation(padded, lengths, kind, S, L, weight=weight)
    assert_maps_equal(got, ref_build(seqs, kind, S, L, weight, 5), kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size,border", [(64, 5), (3, 5), (1, 5), (64, 1), (7, 2)])
def test_reference_rule_other_sizes_and_borders(kind, size, border):
    seqs, padded, lengths = make_batch([9, 30], J=5, seed=7)
    got = build_representation(padded, lengths, kind, size, 10, margin=border)
    assert_maps_equal(got, ref_build(seqs, kind, size, 10, "index", border), kind)


def test_reference_rule_worked_example():
    # x = (-3.7, 10.2, 20.7) -> p = (-3, 10, 20) (toward zero: -3, not floor's -4), lo = -8,
    # hi = 25; y = (3.5, 3.5, 13.1) -> p = (3, 3, 13), lo = -2, hi = 18;
    # scale = min(64 / 33, 64 / 20) = 1.93939...; n_x = int((5, 18, 28) * scale) = (9, 34, 54),
    # n_y = int((5, 5, 15) * scale) = (9, 9, 29). With floor instead: n_x = (9, 35, 54).
    # All joints at (7.5, 7.5): p = 7, lo = 2, hi = 12, scale = 6.4, n = int(5 * 6.4) = 32.
    xy = torch.tensor([[[-3.7, 3.5], [10.2, 3.5], [20.7, 13.1]], [[7.5, 7.5]] * 3])
    pix, valid = normalise_frames(xy, 64)
    assert pix.dtype == torch.int64 and bool(valid.all())
    assert pix.tolist() == [[[9, 9], [34, 9], [54, 29]], [[32, 32]] * 3]
    # S = 10, x = (0, 2, 4): lo = -5, hi = 9, scale = 10 / 14 (y is flat: 10 / 10 is larger);
    # 7 * (10 / 14) is 5.0 in float64 but 7 * (1 / 14) * 10 is 4.999...: division, not reciprocal.
    xy = torch.tensor([[[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]])
    assert normalise_frames(xy, 10)[0].tolist() == [[[3, 3], [5, 3], [6, 3]]]


def test_reference_joints_span_the_border_interval():
    # The spec: the joints span [5 * scale, S - 5 * scale), scale = S / (range + 10) of the wider
    # axis. Pixels are whole: int(5 * scale) <= n <= S - 5 * scale, both ends reached on the wider
    # axis (the top end exactly when S - 5 * scale is whole, see the last frame: the interval is
    # closed there).
    rng = np.random.default_rng(11)
    frames = rng.uniform(0, 1000, size=(200, 6, 2)) * rng.uniform(0.001, 1, size=(200, 1, 1))
    frames[-1] = [[0, 0], [6, 1], [3, 2], [1, 6], [2, 2], [4, 4]]  # range 6: scale = 64 / 16 = 4
    pix, _ = normalise_frames(torch.from_numpy(frames.astype(np.float32)), 64)
    for f, n in zip(frames.astype(np.float32), pix.numpy(), strict=True):
        p = np.trunc(f.astype(np.float64))
        ranges = p.max(axis=0) - p.min(axis=0)
        wide = int(np.argmax(ranges))
        scale = 64 / (ranges[wide] + 10)
        assert n.min() >= int(5 * scale) and n.max() <= 64 - 5 * scale + 1e-9
        assert n[:, wide].min() == int(5 * scale)
        assert n[:, wide].max() > 64 - 5 * scale - 1 - 1e-9
    assert pix[-1, :, 0].max() == 44 == 64 - 5 * 4


def test_reference_indices_stay_inside_the_map():
    # Extreme spreads, coinciding joints, S = 1 and 2: every pixel in [0, S - 1] and as the rule.
    rng = np.random.default_rng(5)
    frames = rng.uniform(-1e9, 1e9, size=(50, 4, 2)).astype(np.float32)
    frames[:10] = rng.uniform(0, 1, size=(10, 4, 2))  # all truncate to 0: range 0
    frames[10:20, :, 1] = 3.0  # a flat axis
    for size in (1, 2, 64, 1000):
        pix, _ = normalise_frames(torch.from_numpy(frames), size)
        assert int(pix.min()) >= 0 and int(pix.max()) <= size - 1
        want = [ref_pixels_reference(f, size) for f in frames]
        assert pix.tolist() == [[list(p) for p in f] for f in want]


def test_reference_rejects_coordinates_beyond_exact_range():
    q = torch.zeros(1, 2, 3, 2)
    q[0, 1, 2, 0] = 2.0**51
    with pytest.raises(ValueError, match="2\\*\\*50"):
        build_representation(q, torch.tensor([2]), "timeline", S, L)
    build_representation(q, torch.tensor([2]), "timeline", S, L, normalise="fit")  # no limit


# ---------------------------------------------------------------- the "fit" normalisation
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weight", ["index", "one"])
@pytest.mark.parametrize("margin", [5, 0])
def test_matches_fit_reference_on_mixed_lengths(kind, weight, margin):
    # T = 1, T < L, T = L and T > L in one padded batch; the padding (1e6) must never be read.
    seqs, padded, lengths = make_batch([1, 5, L, 31, 2 * L])
    got = build_representation(
        padded, lengths, kind, S, L, weight=weight, margin=margin, normalise="fit"
    )
    want = ref_build(seqs, kind, S, L, weight, margin, normalise="fit")
    assert got.dtype == torch.float32 and got.device == padded.device
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_with_huge_coordinates(kind):
    # No NaN, but the coordinates' sum overflows float32: the exact validity mask is used.
    seqs, padded, lengths = make_batch([5, 20], seed=6, holes=False)
    seqs = [q * np.float32(1e35) for q in seqs]
    padded = padded * 1e35
    got = build_representation(padded, lengths, kind, S, L, normalise="fit")
    want = ref_build(seqs, kind, S, L, "index", 5, normalise="fit")
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_fit_timeline_mass_and_margin():
    # Without NaNs every (joint, axis, frame) column holds exactly the joint weight, and the
    # 5-unit margin keeps every pixel in [0, S - 5].
    rng = np.random.default_rng(3)
    q = torch.from_numpy(rng.normal(size=(2, 20, 4, 2)).astype(np.float32))
    out = build_representation(q, torch.tensor([20, 13]), "timeline", S, L, normalise="fit")
    col = out.sum(dim=2)  # (B, 2J, L)
    w = torch.arange(1, 5).repeat_interleave(2).float()
    assert torch.equal(col, w.view(1, 8, 1).expand(2, 8, L))
    assert out[:, :, S - 4 :, :].abs().sum() == 0
    # The extreme joint of the larger axis lands on S - 5 (S - 6 if float rounding falls short).
    assert out[:, :, S - 6 : S - 4, :].sum() > 0


# ---------------------------------------------------------------- both
@pytest.mark.parametrize("normalise", ["reference", "fit"])
@pytest.mark.parametrize("kind", KINDS)
def test_uses_only_x_and_y(kind, normalise):
    seqs, padded, lengths = make_batch([9, 4], D=3, seed=1)
    got = build_representation(padded, lengths, kind, S, L, normalise=normalise)
    want = ref_build(seqs, kind, S, L, "index", 5, normalise=normalise)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("normalise", ["reference", "fit"])
def test_length_one_output(normalise):
    seqs, padded, lengths = make_batch([1, 6], seed=2)
    for kind in KINDS:
        got = build_representation(padded, lengths, kind, S, 1, normalise=normalise)
        want = ref_build(seqs, kind, S, 1, "index", 5, normalise=normalise)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    potion = build_representation(padded, lengths, "potion", S, 1, normalise=normalise)
    assert potion[0].sum() == 7  # L = 1: the single frame has weight 1, one hit per joint


def test_reference_timeline_mass():
    # Without NaNs every (joint, axis, frame) column holds exactly the joint weight.
    rng = np.random.default_rng(3)
    q = torch.from_numpy(rng.normal(0, 50, size=(2, 20, 4, 2)).astype(np.float32))
    out = build_representation(q, torch.tensor([20, 13]), "timeline", S, L)
    w = torch.arange(1, 5).repeat_interleave(2).float()
    assert torch.equal(out.sum(dim=2), w.view(1, 8, 1).expand(2, 8, L))


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


@pytest.mark.parametrize("normalise", ["reference", "fit"])
def test_rising_and_falling_differ_only_in_time_order(normalise):
    rng = np.random.default_rng(4)
    q = rng.uniform(0, 100, size=(L, 5, 2)).astype(np.float32)
    batch = torch.from_numpy(np.stack([q, q[::-1].copy()]))  # (2, L, 5, 2)
    out = build_representation(batch, torch.tensor([L, L]), "timeline", S, L, normalise=normalise)
    assert not torch.equal(out[0], out[1])
    assert torch.equal(out[0], out[1].flip(-1))


@pytest.mark.parametrize("kind", KINDS)
def test_out_buffer_is_cleared_filled_and_returned(kind):
    seqs, padded, lengths = make_batch([9, 30], seed=3)
    buf = torch.full(representation_shape(kind, 2, 7, S, L), 5.0)  # stale content
    got = build_representation(padded, lengths, kind, S, L, out=buf)
    assert got is buf
    assert torch.equal(got, build_representation(padded, lengths, kind, S, L))
    with pytest.raises(ValueError, match="out must be"):
        build_representation(padded, lengths, kind, S, L, out=torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="out must be"):
        build_representation(padded, lengths, kind, S, L, out=buf.double())
    with pytest.raises(ValueError, match="contiguous"):
        wide = torch.zeros(representation_shape(kind, 2, 7, S, L)[:-1] + (2 * buf.shape[-1],))
        build_representation(padded, lengths, kind, S, L, out=wide[..., ::2])


def test_channels_and_errors():
    assert representation_channels("timeline", 25) == 50
    assert representation_channels("timeline_single", 25) == 2
    assert representation_channels("potion", 25) == 25
    assert representation_shape("timeline", 3, 25, 64, 300) == (3, 50, 64, 300)
    assert representation_shape("potion", 3, 25, 64, 300) == (3, 25, 64, 64)
    _, padded, lengths = make_batch([4, 3])
    for kind in KINDS:
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
        build_representation(padded, lengths, "timeline", 5, L, normalise="fit")
    build_representation(padded, lengths, "timeline", 5, L)  # the border does not cost pixels
    with pytest.raises(ValueError, match="margin >= 1"):
        build_representation(padded, lengths, "timeline", S, L, margin=0)
    with pytest.raises(ValueError, match="normalise"):
        build_representation(padded, lengths, "timeline", S, L, normalise="nope")
