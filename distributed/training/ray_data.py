"""Shards -> Ray Data datasets per fold (folds under the materialisation budget, read once;
larger ones stream through ``distributed.training.stream``), and Ray's wrapper around the collates.

Frames stay uint8 until they reach the worker's device; clips are sampled per epoch by the
branch's collate (random for training, deterministic for evaluation); gesture representations
are built on the device from the stored joints.

A fold reads only the row groups that hold its rows (:func:`datasets.shards.fold_plan`, from the
files' ``id`` statistics), and batches reach the collate as Arrow tables whose binary payloads
are handed over as zero-copy numpy views (Ray's numpy batches copy every payload into a Python
``bytes`` object first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
from ray.data.collate_fn import ArrowBatchCollateFn
from ray.data.datasource import Datasource, ReadTask

from branches import get_branch
from datasets import shards
from datasets.shards import shard_row_groups
from distributed.training.stream import arrow_columns

DATA_CPUS = 0.25
BLOCK_BYTES = 32 << 20  # a read task reads about this many stored bytes, as one block


class RayCollate(ArrowBatchCollateFn):
    """Ray Data's Arrow-batch collate protocol around a branch's plain collate callable."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, batch: pa.Table):
        return self.fn(arrow_columns(batch))


def make_collate(cfg, train: bool, epoch: int, forbidden: frozenset[str] = frozenset()):
    """The branch's collate for ``cfg``, wrapped for a Ray dataset's ``iter_torch_batches``."""
    fn = get_branch(cfg.branch).collate(cfg.model, train=train, seed=cfg.seed, epoch=epoch,
                                        forbidden=forbidden)  # fmt: skip
    return RayCollate(fn)


class RayShard:
    """A Ray dataset iterator (a worker's split, or a whole materialised fold) iterated the way
    ``distributed.training.loop`` iterates every shard: with a plain collate callable."""

    def __init__(self, iterator):
        self.iterator = iterator

    def iter_torch_batches(self, *, collate_fn, **kwargs):
        # batches stay on the host (pinned by the loop's collate on GPUs); the loop moves them
        return self.iterator.iter_torch_batches(
            collate_fn=RayCollate(collate_fn), device="cpu", **kwargs
        )


@dataclass(frozen=True)
class RayFold:
    """A fold materialised in Ray's object store, for a host that reads it in its own process
    (``distributed.training.local_hosts``): :meth:`shard` has the interface of a streamed fold's."""

    dataset: object

    def shard(self, rank: int = 0, world: int = 1) -> RayShard:
        if world != 1:
            raise ValueError("a materialised fold is split across workers by Ray Train")
        return RayShard(self.dataset.iterator())


def _read_parts(parts: list, columns: list[str], ids: list[str]):
    """One block per read task: its parts' rows as one table (a block per row group would cost
    Ray Data a round trip each, several times the read itself)."""
    tables = [t for t in (shards.read_fold_part(p, columns, ids) for p in parts) if t.num_rows]
    if tables:
        yield pa.concat_tables(tables)


class FoldDatasource(Datasource):
    """The rows of a fold, read from the planned row groups of each shard file only."""

    def __init__(self, root: str, columns: list[str], ids: list[str], groups=None):
        """``groups``: the folder's row groups (:func:`shard_row_groups`) if already read."""
        super().__init__()
        self.columns, self.ids = list(columns), sorted(set(ids))
        groups = shard_row_groups(root, columns) if groups is None else groups
        self.plan = shards.fold_plan(groups, self.ids)
        self.total_bytes = sum(g.nbytes for g in groups)

    @property
    def planned_bytes(self) -> int:
        return sum(p.nbytes for p in self.plan)

    def estimate_inmemory_data_size(self) -> int:
        return self.planned_bytes

    def task_parts(self) -> list[list]:
        """The plan's parts grouped into read tasks: consecutive parts (files in id order) go to
        one task until it holds BLOCK_BYTES, so few, large blocks keep the per-task overhead
        small against the bytes each task moves."""
        tasks, current = [], []
        for part in self.plan:
            current.append(part)
            if sum(p.nbytes for p in current) >= BLOCK_BYTES:
                tasks.append(current)
                current = []
        if current:
            tasks.append(current)
        return tasks

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        from ray.data.block import BlockMetadata

        columns, ids = self.columns, self.ids
        out = []
        for parts in self.task_parts():
            files = tuple(p.file for p in parts)
            meta = BlockMetadata(
                num_rows=sum(p.rows for p in parts),
                size_bytes=sum(p.nbytes for p in parts),
                exec_stats=None,
                input_files=files,
            )
            out.append(
                ReadTask(
                    lambda parts=parts: _read_parts(parts, columns, ids),
                    meta,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return out


def read_fold(source: FoldDatasource):
    """The Ray dataset of a fold's datasource: one block per read task, at most as many read
    tasks at once as the cluster has CPUs.

    Small CPU shares for the data tasks: next to fractional-CPU Train workers on a small machine,
    1-CPU read tasks can find no slot and the run hangs silently (see README, 2-CPU machines).
    But at 0.25 CPU Ray would run 4 tasks per CPU, each in a worker process of its own, and kill
    the processes beyond one per CPU after a second idle: every epoch then paid their start-up
    again (when large folds still streamed through Ray Data, an epoch of ``benchmarks/feed.py``
    took 5-6 s instead of 0.5-0.7 s). Hence
    the cap on concurrent tasks. ``override_num_blocks`` keeps Ray Data from splitting each
    task's block into many small ones (its default aims at 200 blocks per dataset)."""
    import ray

    from distributed.core.runtime import cluster_cpus

    tasks = max(1, len(source.task_parts()))
    concurrency = max(1, min(tasks, int(cluster_cpus())))
    return ray.data.read_datasource(
        source, num_cpus=DATA_CPUS, concurrency=concurrency, override_num_blocks=tasks
    )


def fold_dataset(root: str, branch: str, ids: list[str]):
    """A Ray dataset of the rows of ``ids`` (only the columns training needs)."""
    if not ids:
        raise ValueError(f"{root}: empty fold")
    return read_fold(FoldDatasource(root, list(get_branch(branch).columns), ids))
