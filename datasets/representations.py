"""Joint trajectories -> image-like tensors for ACCM (Wei et al., ESWA 2024, §2.1-2.4).

Everything here is torch, vectorised over batch, time and joints (no Python loop over frames or
joints) and runs on the input's device. A batch holds sequences of different lengths as a padded
tensor ``joints`` (B, Tmax, J, D) plus ``lengths`` (B,); only x (index 0) and y (index 1) are used,
and values past a sequence's length are never read.

Steps, in order:

1. Temporal resampling to L frames (:func:`resample_indices`): n >= L takes frames
   ``floor(i * n / L)`` for i = 0..L-1 (the exact value of the reference's floored
   ``linspace(0, n, L, endpoint=False)``; floating-point ``linspace`` can land one frame short where
   i * n / L is a whole number, e.g. n = 122, L = 14, i = 7 gives frame 60 instead of 61);
   n < L repeats the last frame (the reference's padding loop leaves zeros instead: a defect).
   n is the sequence's frame count (the reference counts its spreadsheet's header row too,
   n = T + 1, which shifts frames by one in places: a defect, not copied).
2. Per-frame normalisation (:func:`normalise_frames`) into integer pixel coordinates in [0, S),
   over that frame's joints, with one uniform scale for both axes (aspect kept). The y axis is not
   flipped. Two rules, chosen with ``normalise``:

   - ``"reference"`` (default), the paper's reference code: integer coordinates first,
     ``p = int(q)`` (truncation toward zero); per axis ``lo = min(p) - m`` and ``hi = max(p) + m``
     (a border of ``m = margin`` units, default 5, on EACH side);
     ``scale = min(S / (hi_x - lo_x), S / (hi_y - lo_y))`` and ``n = int((p - lo) * scale)``, in
     float64 like the reference's Python floats. The joints span [m * scale, S - m * scale] on the
     wider axis; a frame whose joints all coincide gets hi - lo = 2m and lands in the middle.
     Coordinates are truncated to whole units, so they must come in pixel-like units (pixels,
     millimetres): the reference maps Kinect camera-space metres to ``(1 - x) * 372`` and shifts
     Emilya motion capture by (+1000, +50) before this step, which readers here do not do.
   - ``"fit"`` (this project's earlier rule): over the float coordinates,
     ``scale = (S - margin) / max(max_x - min_x, max_y - min_y)`` and ``p = int((q - min) * scale)``
     in float32, so the joints span [0, S - margin] and only the far side keeps a border. A frame
     whose joints all coincide gets scale 0 (all joints at 0). Results are clamped to [0, S - 1]
     (only reachable with margin = 0).
3. Maps:

   - ``"timeline"`` (B, 2J, S, L): channel 2j is joint j's x map, 2j+1 its y map;
     ``X[j, x_j(t), t] += w_j`` and ``Y[j, y_j(t), t] += w_j``.
   - ``"timeline_single"`` (B, 2, S, L): the same with all joints summed into one x and one y map.
   - ``"potion"`` (B, J, S, S), PoTion-like: ``P[j, y_j(t), x_j(t)] += t / (T - 1)`` (row = y,
     column = x) where T = L, the number of frames after resampling, so every sequence has the same
     temporal weights whatever its raw length; for L = 1 the single frame gets weight 1 (it is the
     last frame).

   Joint weights: ``weight="index"`` gives w_j = j + 1 (the reference, default), ``"one"`` gives 1.
   The potion maps ignore joint weights (one map per joint already).

Layout. The reference stores a timeline as (J, 2, L, S), time before position; we store (2J, S, L),
position as rows and time as columns, i.e. each map transposed. Its PoTion variant flips both axes
and stores ``[j][x][y]``; ours is ``[j, y, x]`` unflipped. For a CNN this is a relabelling of the
input grid: a network with every kernel transposed (or flipped) the same way computes the same
function on our layout, and global average pooling does not see the order, so training learns
around it. (The equivalence is exact up to which border row or column a stride-2 convolution
skips on even-sized inputs.) The maps hold the same values, at transposed (PoTion: transposed and
mirrored) positions.

A joint that is NaN inside a sequence's length is left out of that frame's min/max and adds nothing
to any map (call :func:`datasets.joints.fill_missing` first to interpolate it instead).

On the CPU a fresh output is allocated by numpy (``np.zeros``): the kernel hands out zeroed pages
and numpy asks for transparent huge pages on large arrays, which makes a (64, 56, 64, 300) float32
output several times cheaper to obtain than ``torch.zeros`` (4 KiB page faults plus a memset:
~10 ms against ~65 ms on a 2-core machine). Pass ``out=`` to reuse a buffer across batches.
"""

from __future__ import annotations

import numpy as np
import torch

KINDS = ("timeline", "timeline_single", "potion")
WEIGHTS = ("index", "one")
NORMALISATIONS = ("reference", "fit")

# "reference" keeps |coordinate| below this so that int64 and float64 hold every value exactly
# and the rounding bound in _pixels_reference holds.
_COORD_LIMIT = 2.0**50


def representation_channels(kind: str, num_joints: int) -> int:
    """Number of channels of ``build_representation(kind=...)`` for ``num_joints`` joints."""
    if kind == "timeline":
        return 2 * num_joints
    if kind == "timeline_single":
        return 2
    if kind == "potion":
        return num_joints
    raise ValueError(f"unknown representation kind {kind!r}; choose one of {KINDS}")


def representation_shape(
    kind: str, batch: int, num_joints: int, size: int, length: int
) -> tuple[int, int, int, int]:
    """Shape of ``build_representation``'s output (e.g. to allocate an ``out=`` buffer)."""
    last = size if kind == "potion" else length
    return (batch, representation_channels(kind, num_joints), size, last)


def resample_indices(lengths: torch.Tensor, length: int, checked: bool = False) -> torch.Tensor:
    """Frame indices (B, L) int64 that resample each sequence of ``lengths`` (B,) to ``length``.

    n >= L: ``floor(i * n / L)`` (exact integer arithmetic); n < L: ``min(i, n - 1)``, i.e. the
    sequence followed by copies of its last frame. ``checked``: every length is known to be
    >= 1 (checked on the host), so nothing is read back from the device.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    n = lengths.to(torch.int64).unsqueeze(1)  # (B, 1)
    if not checked and bool((n < 1).any()):
        raise ValueError("every sequence needs at least one frame")
    i = torch.arange(length, device=lengths.device, dtype=torch.int64).unsqueeze(0)  # (1, L)
    spread = torch.div(i * n, length, rounding_mode="floor")  # (B, L)
    repeat = torch.minimum(i, n - 1)  # (B, L)
    return torch.where(n >= length, spread, repeat)


def resample(joints: torch.Tensor, lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Padded joints (B, Tmax, J, D) -> (B, L, J, D) resampled to ``length`` frames."""
    B, _, J, D = joints.shape
    idx = resample_indices(lengths.to(joints.device), length)  # (B, L)
    idx = idx[:, :, None, None].expand(B, length, J, D)  # (B, L, J, D)
    return torch.gather(joints, 1, idx)


# The work below runs on an internal layout q (2, J, N): axis, joint, frame (N = B*L or any
# flattened frame count), frames innermost. Per-frame reductions then run over a middle axis and
# every broadcast has a long contiguous inner axis; with the natural (..., J, 2) layout torch's
# elementwise kernels crawl along an inner axis of 2 and the normalisation is ~10x slower. Each
# step is one pass over the joints, in place where it can be: every fresh multi-MiB temporary
# costs page faults once the allocator has handed the previous one back to the system.
# ``valid`` is a (J, N) mask of the joints with finite x and y, or None when all of them are.


def _valid_joints(q: torch.Tensor, all_finite: bool | None = None) -> torch.Tensor | None:
    """(J, N) mask of the joints of q (2, J, N) with finite coordinates, or None if all are
    (``all_finite``: already known, e.g. checked on the host; no device read then)."""
    if all_finite is None:
        # One reduction answers the common case: a sum is finite only if every term is (a sum
        # that overflows to inf just takes the exact path below).
        all_finite = bool(torch.isfinite(q.sum()))
    return None if all_finite else torch.isfinite(q).all(dim=0)


def _frame_min_max(q: torch.Tensor, valid: torch.Tensor | None):
    """Per-frame, per-axis min and max over the valid joints: two (2, 1, N) tensors."""
    if valid is None:
        return torch.aminmax(q, dim=1, keepdim=True)
    inf = float("inf")
    lo = torch.where(valid, q, inf).amin(dim=1, keepdim=True)  # (2, 1, N)
    hi = torch.where(valid, q, -inf).amax(dim=1, keepdim=True)  # (2, 1, N)
    return lo, hi


def _pixels_reference(
    q: torch.Tensor, valid: torch.Tensor | None, size: int, border: int, checked: bool = False
):
    """q (2, J, N) float -> pixels (2, J, N) int64 by the reference's rule (invalid joints: 0);
    ``checked``: the coordinates' magnitude was checked already (on the host)."""
    if not q.is_floating_point():
        q = q.to(torch.float64)
    if valid is not None:
        q = q.masked_fill(~valid, 0.0)  # no NaN left
    if not checked:
        _check_magnitude(q)
    p = torch.trunc(q)  # p = int(q): truncation toward zero, exact in q's own float type
    lo, hi = _frame_min_max(p, valid)  # (2, 1, N) each
    lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    if valid is not None:
        seen = valid.any(dim=0, keepdim=True)  # (1, N); a frame with no joint maps nothing
        lo, hi = torch.where(seen, lo, 0.0), torch.where(seen, hi, 0.0)
    lo = lo - border
    extent = hi + border - lo  # (2, 1, N), whole numbers >= 2 * border >= 2
    # Tensor / tensor: torch turns `number / tensor` into a reciprocal times the number, which
    # rounds differently from Python's S / (hi - lo). float64, as the reference's Python floats.
    scale = (torch.full_like(extent, float(size)) / extent).amin(dim=0, keepdim=True)  # (1, 1, N)
    # p - lo >= border > 0, so the cast (truncation) is int(). No clamp: with border >= 1,
    # n <= (d - border) * fl(S / d) < S * (1 - 2**-51) * (1 + 2**-53) for d = hi - lo < 2**52,
    # so even after float64 rounding n <= S - 1 (the formula reaches S only with border 0).
    pix = p.to(torch.float64).sub_(lo).mul_(scale).to(torch.int64)  # (2, J, N)
    return pix if valid is None else pix.masked_fill_(~valid, 0)


def _pixels_fit(q: torch.Tensor, valid: torch.Tensor | None, size: int, margin: int):
    """q (2, J, N) float -> pixels (2, J, N) int64 by the "fit" rule (invalid joints: 0)."""
    work = q.to(torch.float32, copy=True)  # (2, J, N)
    lo, hi = _frame_min_max(work, valid)  # (2, 1, N) each
    extent = (hi - lo).amax(dim=0, keepdim=True)  # (1, 1, N)
    # Frames with no valid joint give extent -inf - inf = -inf; coinciding joints give 0.
    ok = torch.isfinite(extent) & (extent > 0)
    # torch turns `number / tensor` into a reciprocal times the number: divide tensors instead.
    span = torch.full_like(extent, float(size - margin))
    scale = torch.where(ok, span / torch.where(ok, extent, 1.0), 0.0)
    work.sub_(lo).mul_(scale)  # (2, J, N)
    if valid is not None:
        work.masked_fill_(~valid, 0.0)
    return work.floor_().to(torch.int64).clamp_(0, size - 1)


def _check_normalise(size: int, margin: int, normalise: str) -> None:
    if normalise not in NORMALISATIONS:
        raise ValueError(f"unknown normalise {normalise!r}; choose one of {NORMALISATIONS}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if normalise == "reference" and margin < 1:
        raise ValueError(f"the reference normalisation needs a margin >= 1, got {margin}")
    if normalise == "fit" and size - margin < 1:
        raise ValueError(f"size {size} leaves no room for a margin of {margin}")


def host_check(joints_padded: np.ndarray, lengths: np.ndarray) -> bool:
    """The checks of :func:`build_representation` on a host batch (numpy): raises what it would
    raise; returns whether every coordinate is finite (its ``all_finite``)."""
    xy = joints_padded[..., :2]
    if lengths.size and (lengths.min() < 1 or lengths.max() > xy.shape[1]):
        raise ValueError(f"every length must be in [1, {xy.shape[1]}], got {lengths.tolist()}")
    finite = np.isfinite(xy)
    all_finite = bool(finite.all())
    values = xy if all_finite else xy[finite]
    if values.size and np.abs(values).max() >= _COORD_LIMIT:
        raise ValueError("joint coordinates must be below 2**50 in magnitude")
    return all_finite


def _check_magnitude(q: torch.Tensor) -> None:
    """Refuse coordinates the reference's integer rule cannot represent (NaN-free ``q``)."""
    q_lo, q_hi = torch.aminmax(q)
    if bool((q_hi >= _COORD_LIMIT) | (q_lo <= -_COORD_LIMIT)):
        raise ValueError("joint coordinates must be below 2**50 in magnitude")


def _pixels(
    q: torch.Tensor, size: int, margin: int, normalise: str, all_finite: bool | None = None
):
    """q (2, J, N) -> (pixels (2, J, N) int64, valid (J, N) bool or None: all valid).
    ``all_finite`` known (True/False): the input was checked on the host, nothing is read back."""
    valid = _valid_joints(q, all_finite)
    if normalise == "reference":
        checked = all_finite is not None
        return _pixels_reference(q, valid, size, margin, checked), valid
    return _pixels_fit(q, valid, size, margin), valid


def normalise_frames(
    xy: torch.Tensor, size: int, margin: int = 5, normalise: str = "reference"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame min-max normalisation of ``xy`` (..., J, 2) to int64 pixels in [0, size).

    Returns ``(pixels (..., J, 2) int64, valid (..., J) bool)``; a joint with a NaN coordinate is
    not valid, is left out of its frame's min/max and gets pixel 0. ``normalise``: "reference"
    (``margin`` = the border on each side, >= 1) or "fit" (``margin`` = the far-side border, at
    most ``size - 1``); see the module docstring.
    """
    _check_normalise(size, margin, normalise)
    *lead, J, _ = xy.shape
    q = xy.reshape(-1, J, 2).permute(2, 1, 0)  # (2, J, N)
    pix, valid = _pixels(q, size, margin, normalise)
    pix = pix.permute(2, 1, 0).reshape(*lead, J, 2)  # (..., J, 2)
    if valid is None:
        return pix, torch.ones(pix.shape[:-1], dtype=torch.bool, device=pix.device)
    return pix, valid.permute(1, 0).reshape(*lead, J)


def _joint_weights(num_joints: int, weight: str, device: torch.device) -> torch.Tensor:
    if weight == "index":
        return torch.arange(1, num_joints + 1, device=device, dtype=torch.float32)
    if weight == "one":
        return torch.ones(num_joints, device=device, dtype=torch.float32)
    raise ValueError(f"unknown joint weight {weight!r}; choose one of {WEIGHTS}")


def _zeros(shape: tuple[int, ...], device: torch.device, out: torch.Tensor | None):
    """A zeroed float32 tensor of ``shape``: ``out`` (checked, zeroed) or a fresh one."""
    if out is not None:
        if tuple(out.shape) != shape or out.dtype != torch.float32 or out.device != device:
            raise ValueError(
                f"out must be float32 {shape} on {device}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device}"
            )
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
        return out.zero_()
    if device.type == "cpu":
        # Kernel-zeroed huge pages (see the module docstring); torch.zeros is ~6x slower here.
        return torch.from_numpy(np.zeros(shape, np.float32))
    return torch.zeros(shape, device=device, dtype=torch.float32)


def _timeline(pix, valid, w, size: int, single: bool, out) -> torch.Tensor:
    """pix (2, J, B, L), valid (J, B, L) or None, w (J,) -> (B, 2J, S, L) or (B, 2, S, L)."""
    _, J, B, L = pix.shape
    maps = 1 if single else J
    dev = pix.device
    res = _zeros((B, 2 * maps, size, L), dev, out)
    axis = torch.arange(2, device=dev).view(2, 1, 1, 1)
    j = torch.zeros(1, 1, 1, 1, device=dev, dtype=torch.int64)
    if not single:
        j = torch.arange(J, device=dev).view(1, J, 1, 1)
    b = torch.arange(B, device=dev).view(1, 1, B, 1)
    t = torch.arange(L, device=dev).view(1, 1, 1, L)
    # Flat index into (B, maps, 2, S, L): one entry per (axis, joint, b, t).
    base = ((b * maps + j) * 2 + axis) * (size * L) + t  # (2, J or 1, B, L), small dims broadcast
    flat = pix.mul(L).add_(base)  # (2, J, B, L)
    val = w.view(J, 1, 1) if valid is None else valid.to(torch.float32) * w.view(J, 1, 1)
    val = val.expand(2, J, B, L)  # (2, J, B, L), a view
    # One map per joint: each (b, channel, t) column gets exactly one entry (an invalid joint
    # writes 0 at row 0), so a plain scatter suffices; summed joints collide and must accumulate.
    # put_ (flat indices) measured ~2x faster than index_put_ / index_add_ here on CPU.
    res.put_(flat.reshape(-1), val.reshape(-1), accumulate=single)
    return res  # (B, 2*maps, S, L)


def _potion(pix: torch.Tensor, valid, size: int, out) -> torch.Tensor:
    """pix (2, J, B, L), valid (J, B, L) or None -> (B, J, S, S), P[j, y, x] += t / (L - 1)."""
    _, J, B, L = pix.shape
    dev = pix.device
    res = _zeros((B, J, size, size), dev, out)
    j = torch.arange(J, device=dev).view(J, 1, 1)
    b = torch.arange(B, device=dev).view(1, B, 1)
    if L > 1:
        tw = torch.arange(L, device=dev, dtype=torch.float32) / (L - 1)
    else:
        tw = torch.ones(1, device=dev)
    flat = ((b * J + j) * size + pix[1]) * size + pix[0]  # (J, B, L)
    val = tw.expand(J, B, L) if valid is None else valid.to(torch.float32) * tw  # (J, B, L)
    res.put_(flat.reshape(-1), val.reshape(-1), accumulate=True)
    return res  # (B, J, S, S)


def build_representation(
    joints_padded: torch.Tensor,
    lengths: torch.Tensor,
    kind: str,
    size: int,
    length: int,
    weight: str = "index",
    margin: int = 5,
    *,
    out: torch.Tensor | None = None,
    normalise: str = "reference",
    device: torch.device | str | None = None,
    all_finite: bool | None = None,
) -> torch.Tensor:
    """Padded joints (B, Tmax, J, D>=2) + lengths (B,) -> float32 maps on ``device`` (default:
    the input's device).

    ``kind``: "timeline" (B, 2J, S, L), "timeline_single" (B, 2, S, L) or "potion" (B, J, S, S),
    with S = ``size`` and L = ``length``; ``weight``: "index" (w_j = j + 1, the reference) or "one";
    ``margin``: the border of the normalisation (units on each side for "reference", pixels on the
    far side for "fit"); ``normalise``: "reference" (the paper's code, default) or "fit";
    ``out``: an optional contiguous float32 tensor of the output's shape
    (:func:`representation_shape`) on the input's device, zeroed, filled and returned (reuse one
    across batches to skip allocating). See the module docstring for the exact rules.

    ``device``: build the maps there (the input is copied without blocking). ``all_finite``:
    the caller checked the input on the host (every length in [1, Tmax], every coordinate below
    2**50 in magnitude) and says whether every coordinate is finite; nothing is then read back
    from the device (a GPU would wait for each read; :func:`host_check` does the checks).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown representation kind {kind!r}; choose one of {KINDS}")
    if joints_padded.ndim != 4 or joints_padded.shape[-1] < 2:
        raise ValueError(f"joints must be (B, T, J, D>=2), got {tuple(joints_padded.shape)}")
    _check_normalise(size, margin, normalise)
    B, Tmax, J, _ = joints_padded.shape
    lengths = torch.as_tensor(lengths, device=joints_padded.device)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be ({B},), got {tuple(lengths.shape)}")
    if all_finite is None:  # not checked by the caller: check here (reads the input's values)
        if bool((lengths > Tmax).any()):
            raise ValueError(f"a length exceeds the padded time axis ({Tmax})")
    if device is not None:
        joints_padded = joints_padded.to(device, non_blocking=True)
        lengths = lengths.to(device, non_blocking=True)
    dev = joints_padded.device
    w = _joint_weights(J, weight, dev) if kind != "potion" else None
    idx = resample_indices(lengths, length, checked=all_finite is not None)  # (B, L)
    src = joints_padded[..., :2].permute(3, 2, 0, 1)  # (2, J, B, Tmax), a view
    q = torch.gather(src, 3, idx.view(1, 1, B, length).expand(2, J, B, length))  # (2, J, B, L)
    pix, valid = _pixels(q.reshape(2, J, B * length), size, margin, normalise, all_finite)
    pix = pix.view(2, J, B, length)
    valid = None if valid is None else valid.view(J, B, length)
    if kind == "potion":
        return _potion(pix, valid, size, out)
    return _timeline(pix, valid, w, size, kind == "timeline_single", out)


__all__ = [
    "KINDS",
    "NORMALISATIONS",
    "WEIGHTS",
    "build_representation",
    "host_check",
    "normalise_frames",
    "representation_channels",
    "representation_shape",
    "resample",
    "resample_indices",
]
