"""Clip sampling (Wei et al. 2024, §1.1): which stored frames make up the C clips of K frames.

Sampling happens late, per epoch, on stored uint8 frames: random for training, deterministic for
evaluation. Per-item randomness comes from (seed, epoch, item id), so a result does not depend on
which thread or worker happened to sample the item.
"""

from __future__ import annotations

import zlib

import numpy as np


def clip_indices(
    n: int, clips: int, frames: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Frame indices (clips, frames) for a video of ``n`` frames.

    n > C·K: the index range is cut into C segments of ``n // C`` frames (the last one also takes
    the remainder); with ``rng`` K distinct indices are drawn in each segment and sorted. Without
    it, the reference's deterministic sampler: in a segment of ``len`` frames starting at
    ``start``, offsets ``int(k * len / K)`` for k = 0..K-2 and ``len - 1`` (the segment's last
    frame) for k = K-1; K = 2 gives the first and last frame, K = 3 gives 0, len // 3, len - 1.
    K = 1 follows the same rule, whose only term is k = K-1: each segment's last frame (so the
    last clip ends on the video's last frame, as for every K). The offsets are distinct because
    ``len >= K``.
    n <= C·K: the last frame is repeated up to C·K frames, cut into C consecutive clips of K.
    """
    if n < 1:
        raise ValueError("a video needs at least one frame")
    if clips < 1 or frames < 1:
        raise ValueError(f"clips and frames must be >= 1, got {clips}, {frames}")
    total = clips * frames
    if n <= total:
        idx = np.minimum(np.arange(total), n - 1)
        return idx.reshape(clips, frames)
    seg = n // clips
    starts = np.arange(clips) * seg
    ends = np.append(starts[1:], n)
    if rng is None:
        seg_len = (ends - starts)[:, None]  # (C, 1)
        # k * len // K is int(k * len / K) exactly (no float rounding on long videos)
        offsets = (np.arange(frames)[None, :] * seg_len) // frames  # (C, K)
        offsets[:, -1] = seg_len[:, 0] - 1
        return starts[:, None] + offsets
    out = np.empty((clips, frames), dtype=np.int64)
    for c in range(clips):  # C is small (<= ~16); the draw per segment is vectorised
        out[c] = np.sort(rng.choice(np.arange(starts[c], ends[c]), size=frames, replace=False))
    return out


def item_rng(seed: int, epoch: int, item_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, item id)."""
    return np.random.default_rng([seed, epoch, zlib.crc32(item_id.encode())])


def sample_clips(
    video: np.ndarray, clips: int, frames: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Gather (C, K, S, S, 3) uint8 from a stored (n, S, S, 3) video."""
    idx = clip_indices(video.shape[0], clips, frames, rng)
    return video[idx]  # (C, K, S, S, 3)
