"""Shards -> Ray Data datasets per fold, and Ray's wrapper around the branches' collates.

Frames stay uint8 until they reach the worker's device; clips are sampled per epoch by the
branch's collate (random for training, deterministic for evaluation); gesture representations
are built on the device from the stored joints.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.collate_fn import NumpyBatchCollateFn

from branches import get_branch
from datasets import shards

DATA_CPUS = 0.25


class RayCollate(NumpyBatchCollateFn):
    """Ray Data's numpy-batch collate protocol around a branch's plain collate callable."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, batch):
        return self.fn(batch)


def make_collate(cfg, train: bool, epoch: int, forbidden: frozenset[str] = frozenset()):
    """The branch's collate for ``cfg``, wrapped for ``iter_torch_batches``."""
    fn = get_branch(cfg.branch).collate(cfg.model, train=train, seed=cfg.seed, epoch=epoch,
                                        forbidden=forbidden)  # fmt: skip
    return RayCollate(fn)


class _KeepIds:
    """Ray Data batch filter keeping the rows whose id is in a fixed set."""

    def __init__(self, ids: list[str]):
        self.ids = pa.array(sorted(ids), pa.string())

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_in(batch["id"], value_set=self.ids))


def fold_dataset(root: str, branch: str, ids: list[str]):
    """A Ray dataset of the rows of ``ids`` (only the columns training needs)."""
    import ray

    if not ids:
        raise ValueError(f"{root}: empty fold")
    columns = list(get_branch(branch).columns)
    # Small CPU shares for the data tasks: next to fractional-CPU Train workers on a small machine,
    # 1-CPU read tasks can find no slot and the run hangs silently (see README, 2-CPU machines).
    ds = ray.data.read_parquet(shards.shard_files(root), columns=columns, num_cpus=DATA_CPUS)
    return ds.map_batches(
        _KeepIds(ids), batch_format="pyarrow", batch_size=None, num_cpus=DATA_CPUS
    )
