"""Joint trajectories -> image-like tensors for ACCM (Wei et al., ESWA 2024, §2.3-2.4).

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
2. Per-frame normalisation (:func:`normalise_frames`) into integer pixel coordinates in [0, S):
   over that frame's joints, ``scale = (S - margin) / max(max_x - min_x, max_y - min_y)``, i.e.
   ``min((S - margin) / range_x, (S - margin) / range_y)``: one uniform scale for both axes (aspect
   kept) and ``p = int((q - min) * scale)``, so the joints span [0, S - margin] and the far side
   keeps a ``margin``-unit border (default 5). A frame whose joints all coincide gets scale 0 (all
   joints at 0). Results are clamped to [0, S - 1] (only reachable with margin = 0). The arithmetic
   is float32, in this order. The y axis is not flipped.
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

A joint that is NaN inside a sequence's length is left out of that frame's min/max and adds nothing
to any map (call :func:`datasets.joints.fill_missing` first to interpolate it instead).
"""

from __future__ import annotations

import torch

KINDS = ("timeline", "timeline_single", "potion")
WEIGHTS = ("index", "one")


def representation_channels(kind: str, num_joints: int) -> int:
    """Number of channels of ``build_representation(kind=...)`` for ``num_joints`` joints."""
    if kind == "timeline":
        return 2 * num_joints
    if kind == "timeline_single":
        return 2
    if kind == "potion":
        return num_joints
    raise ValueError(f"unknown representation kind {kind!r}; choose one of {KINDS}")


def resample_indices(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Frame indices (B, L) int64 that resample each sequence of ``lengths`` (B,) to ``length``.

    n >= L: ``floor(i * n / L)`` (exact integer arithmetic); n < L: ``min(i, n - 1)``, i.e. the
    sequence followed by copies of its last frame.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    n = lengths.to(torch.int64).unsqueeze(1)  # (B, 1)
    if bool((n < 1).any()):
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


def normalise_frames(
    xy: torch.Tensor, size: int, margin: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame min-max normalisation of ``xy`` (..., J, 2) to int64 pixels in [0, size).

    Returns ``(pixels (..., J, 2) int64, valid (..., J) bool)``; a joint with a NaN coordinate is
    not valid, is left out of its frame's min/max and gets pixel 0. See the module docstring.
    """
    if size - margin < 1:
        raise ValueError(f"size {size} leaves no room for a margin of {margin}")
    xy = xy.to(torch.float32)
    valid = torch.isfinite(xy).all(dim=-1)  # (..., J)
    v = valid.unsqueeze(-1)  # (..., J, 1)
    inf = torch.tensor(float("inf"), dtype=xy.dtype, device=xy.device)
    lo = torch.where(v, xy, inf).amin(dim=-2, keepdim=True)  # (..., 1, 2)
    hi = torch.where(v, xy, -inf).amax(dim=-2, keepdim=True)  # (..., 1, 2)
    extent = (hi - lo).amax(dim=-1, keepdim=True)  # (..., 1, 1)
    # Frames with no valid joint give extent -inf - inf = -inf; coinciding joints give 0.
    ok = torch.isfinite(extent) & (extent > 0)
    # torch turns `number / tensor` into a reciprocal times the number: divide tensors instead.
    span = torch.full_like(extent, float(size - margin))
    scale = torch.where(ok, span / torch.where(ok, extent, 1.0), 0.0)
    pos = torch.where(v, (xy - lo) * scale, 0.0)  # (..., J, 2)
    pix = torch.floor(pos).to(torch.int64).clamp_(0, size - 1)
    return pix, valid


def _joint_weights(num_joints: int, weight: str, device: torch.device) -> torch.Tensor:
    if weight == "index":
        return torch.arange(1, num_joints + 1, device=device, dtype=torch.float32)
    if weight == "one":
        return torch.ones(num_joints, device=device, dtype=torch.float32)
    raise ValueError(f"unknown joint weight {weight!r}; choose one of {WEIGHTS}")


def _timeline(
    pix: torch.Tensor, valid: torch.Tensor, w: torch.Tensor, size: int, single: bool
) -> torch.Tensor:
    """pix (B, L, J, 2), valid (B, L, J), w (J,) -> (B, 2J, S, L) or (B, 2, S, L)."""
    B, L, J, _ = pix.shape
    maps = 1 if single else J
    b = torch.arange(B, device=pix.device).view(B, 1, 1, 1)
    t = torch.arange(L, device=pix.device).view(1, L, 1, 1)
    j = torch.arange(J, device=pix.device).view(1, 1, J, 1)
    if single:
        j = torch.zeros_like(j)
    axis = torch.arange(2, device=pix.device).view(1, 1, 1, 2)
    # Flat index into (B, maps, 2, S, L): one entry per (b, t, joint, axis).
    flat = (((b * maps + j) * 2 + axis) * size + pix) * L + t  # (B, L, J, 2)
    val = (valid.to(torch.float32) * w).unsqueeze(-1).expand(B, L, J, 2)  # (B, L, J, 2)
    out = torch.zeros(B * maps * 2 * size * L, device=pix.device, dtype=torch.float32)
    out.index_add_(0, flat.reshape(-1), val.reshape(-1))
    return out.view(B, maps * 2, size, L)  # (B, 2*maps, S, L)


def _potion(pix: torch.Tensor, valid: torch.Tensor, size: int) -> torch.Tensor:
    """pix (B, L, J, 2), valid (B, L, J) -> (B, J, S, S) with P[j, y, x] += t / (L - 1)."""
    B, L, J, _ = pix.shape
    b = torch.arange(B, device=pix.device).view(B, 1, 1)
    j = torch.arange(J, device=pix.device).view(1, 1, J)
    if L > 1:
        tw = torch.arange(L, device=pix.device, dtype=torch.float32) / (L - 1)
    else:
        tw = torch.ones(1, device=pix.device)
    flat = ((b * J + j) * size + pix[..., 1]) * size + pix[..., 0]  # (B, L, J)
    val = valid.to(torch.float32) * tw.view(1, L, 1)  # (B, L, J)
    out = torch.zeros(B * J * size * size, device=pix.device, dtype=torch.float32)
    out.index_add_(0, flat.reshape(-1), val.reshape(-1))
    return out.view(B, J, size, size)  # (B, J, S, S)


def build_representation(
    joints_padded: torch.Tensor,
    lengths: torch.Tensor,
    kind: str,
    size: int,
    length: int,
    weight: str = "index",
    margin: int = 5,
) -> torch.Tensor:
    """Padded joints (B, Tmax, J, D>=2) + lengths (B,) -> float32 maps on the input's device.

    ``kind``: "timeline" (B, 2J, S, L), "timeline_single" (B, 2, S, L) or "potion" (B, J, S, S),
    with S = ``size`` and L = ``length``; ``weight``: "index" (w_j = j + 1, the reference) or "one";
    ``margin``: the border in pixels of the normalisation. See the module docstring for the exact
    rules.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown representation kind {kind!r}; choose one of {KINDS}")
    if joints_padded.ndim != 4 or joints_padded.shape[-1] < 2:
        raise ValueError(f"joints must be (B, T, J, D>=2), got {tuple(joints_padded.shape)}")
    B, Tmax, J, _ = joints_padded.shape
    lengths = torch.as_tensor(lengths, device=joints_padded.device)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be ({B},), got {tuple(lengths.shape)}")
    if bool((lengths > Tmax).any()):
        raise ValueError(f"a length exceeds the padded time axis ({Tmax})")
    xy = resample(joints_padded[..., :2], lengths, length)  # (B, L, J, 2)
    pix, valid = normalise_frames(xy, size, margin)
    if kind == "potion":
        return _potion(pix, valid, size)
    w = _joint_weights(J, weight, joints_padded.device)
    return _timeline(pix, valid, w, size, single=kind == "timeline_single")


__all__ = [
    "KINDS",
    "WEIGHTS",
    "build_representation",
    "normalise_frames",
    "representation_channels",
    "resample",
    "resample_indices",
]
