"""Shards -> Ray Data datasets per fold, and the per-epoch collate functions of the workers.

Frames stay uint8 until they reach the worker's device; clips are sampled per epoch (random for
training, deterministic for evaluation); gesture representations are built on the device from the
stored joints, so their S and L can be searched without re-preprocessing.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from datasets import shards
from datasets.clips import item_rng, sample_clips

COLUMNS = {
    "facial": ["id", "label", "n_frames", "size", "frames"],
    "gesture": ["id", "label", "n_frames", "n_joints", "dims", "joints", "confidence"],
}


DATA_CPUS = 0.25


class ForbiddenRowError(RuntimeError):
    """A row that must not be read here (an outer test row during the search) was read."""


def check_allowed(ids: Iterable[str], forbidden: frozenset[str]) -> None:
    if forbidden:
        bad = sorted(set(ids) & forbidden)
        if bad:
            raise ForbiddenRowError(f"rows {bad[:5]} of a held-out test fold reached training code")


class _KeepIds:
    """Ray Data batch filter keeping the rows whose id is in a fixed set."""

    def __init__(self, ids: list[str]):
        self.ids = pa.array(sorted(ids), pa.string())

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_in(batch["id"], value_set=self.ids))


def fold_dataset(root: str, kind: str, ids: list[str]):
    """A Ray dataset of the rows of ``ids`` (only the columns training needs)."""
    import ray

    if not ids:
        raise ValueError(f"{root}: empty fold")
    # Small CPU shares for the data tasks: next to fractional-CPU Train workers on a small machine,
    # 1-CPU read tasks can find no slot and the run hangs silently (see README, 2-CPU machines).
    ds = ray.data.read_parquet(shards.shard_files(root), columns=COLUMNS[kind], num_cpus=DATA_CPUS)
    return ds.map_batches(
        _KeepIds(ids), batch_format="pyarrow", batch_size=None, num_cpus=DATA_CPUS
    )


class FacialCollate(NumpyBatchCollateFn):
    """Numpy batch -> {"x": (B, C, K, 3, S, S) uint8, "y": (B,) int64}.

    ``x`` is a channels-last view of the stored (…, S, S, 3) frames: no copy of the pixels beyond
    the clip gather; float conversion happens on the worker's device inside the model.
    """

    def __init__(
        self,
        clips: int,
        frames: int,
        train: bool,
        seed: int,
        epoch: int,
        forbidden: frozenset[str] = frozenset(),
    ):
        self.clips, self.frames, self.train = clips, frames, train
        self.seed, self.epoch, self.forbidden = seed, epoch, forbidden

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        check_allowed(batch["id"], self.forbidden)
        out = []
        for item_id, payload, n, s in zip(
            batch["id"], batch["frames"], batch["n_frames"], batch["size"]
        ):
            video = shards.facial_frames(payload, n, s)
            rng = item_rng(self.seed, self.epoch, str(item_id)) if self.train else None
            out.append(sample_clips(video, self.clips, self.frames, rng))
        x = torch.from_numpy(np.stack(out))  # (B, C, K, S, S, 3)
        return {
            "x": x.permute(0, 1, 2, 5, 3, 4),  # (B, C, K, 3, S, S), channels-last strides
            "y": torch.as_tensor(batch["label"].astype(np.int64)),
        }


class GestureCollate(NumpyBatchCollateFn):
    """Numpy batch -> {"joints": (B, Tmax, J, 2) float32 zero-padded, "lengths", "y"}."""

    def __init__(self, forbidden: frozenset[str] = frozenset()):
        self.forbidden = forbidden

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        check_allowed(batch["id"], self.forbidden)
        seqs = [
            shards.gesture_arrays(j, c, t, nj, d)[0][..., :2]  # (T, J, 2): x, y only
            for j, c, t, nj, d in zip(
                batch["joints"],
                batch["confidence"],
                batch["n_frames"],
                batch["n_joints"],
                batch["dims"],
            )
        ]
        joints = {s.shape[1] for s in seqs}
        if len(joints) != 1:
            raise ValueError(f"a batch mixes joint counts {sorted(joints)}; one layout per dataset")
        lengths = np.array([s.shape[0] for s in seqs], np.int64)
        padded = np.zeros((len(seqs), lengths.max(), seqs[0].shape[1], 2), np.float32)
        for i, s in enumerate(seqs):
            padded[i, : s.shape[0]] = s
        return {
            "joints": torch.from_numpy(padded),
            "lengths": torch.from_numpy(lengths),
            "y": torch.as_tensor(batch["label"].astype(np.int64)),
        }


def make_collate(cfg, train: bool, epoch: int, forbidden: frozenset[str] = frozenset()):
    if cfg.kind == "facial":
        return FacialCollate(cfg.clips, cfg.frames, train, cfg.seed, epoch, forbidden)
    return GestureCollate(forbidden)
