"""Folds over the materialisation budget, read by the training workers themselves.

A streamed fold is its plan (:func:`datasets.shards.fold_plan`: the row groups of each shard file
that hold the fold's rows) and its ids; it crosses to the workers inside the loop's config. Every
epoch each worker reads its share of the plan's parts straight from the shard folder (a path or
a bucket), keeps the fold's rows, shuffles them in a bounded buffer and collates batches. Two
background threads do it (reading, with ``READ_AHEAD`` parts fetched at once to hide an object
store's latency; then shuffle + collate), a few batches ahead of the training step. Nothing passes
through the object store and no Ray Data job starts per epoch (``benchmarks/feed.py`` measured
Ray Data's streamed pass at 41-64% of a plain pyarrow read of the same files).

Training folds are split across workers in equal shares, as Ray Train splits a dataset: every
epoch the parts are put in an order drawn from the epoch's seed (the same on every worker), and
worker ``r`` of ``w`` takes rows ``[r n, (r + 1) n)`` of that sequence, ``n = rows // w``; the
``rows % w`` rows left over sit that epoch out, and a part on a boundary is read by both of its
workers, each keeping its own rows. Equal shares keep DDP's steps in lockstep; the plan's row
counts make them exact (checked when the plan is made, and again as each part is read).
Validation folds are partitioned, in plan order: worker ``r`` scores rows
``[r N // w, (r + 1) N // w)`` and the counts are summed once per epoch, so every row is scored
exactly once whatever the number of workers. Memory is bounded by
``READ_AHEAD`` + 2 parts, the shuffle buffer and the look-ahead batches, whatever the fold's size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datasets import shards


def arrow_columns(table: pa.Table) -> dict[str, object]:
    """An Arrow batch as the dict of columns a branch collate takes, without copying payloads.

    Binary columns become lists of uint8 views into Arrow's buffers, strings and numbers numpy
    arrays (what Ray's numpy batches hold, less the per-row ``bytes`` copies)."""
    out: dict[str, object] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_large_binary(col.type) or pa.types.is_binary(col.type):
            width = np.int64 if pa.types.is_large_binary(col.type) else np.int32
            views = []
            for chunk in col.chunks:
                offsets = np.frombuffer(chunk.buffers()[1], width)[chunk.offset :]
                data = np.frombuffer(chunk.buffers()[2], np.uint8)
                views += [data[offsets[i] : offsets[i + 1]] for i in range(len(chunk))]
            out[name] = views
        else:
            out[name] = col.to_numpy()
    return out


_DONE = object()
READ_AHEAD = 3  # parts fetched at once by a worker's reader


@dataclass(frozen=True)
class StreamedFold:
    """A fold that streams from its shards every epoch (see the module's text)."""

    columns: tuple[str, ...]
    ids: tuple[str, ...]  # sorted
    parts: tuple[shards.FoldPart, ...]
    split: bool  # True: a training fold, shared out among the workers

    @classmethod
    def plan(cls, groups: Sequence[shards.RowGroup], columns, ids, split: bool) -> StreamedFold:
        """The fold of ``ids`` over a shard folder's row groups; every id must be in exactly one
        group's ``id`` range (shards written by ``distributed.preprocess`` are)."""
        wanted = tuple(sorted(set(ids)))
        parts = tuple(shards.fold_plan(groups, wanted))
        planned = sum(p.rows for p in parts)
        if planned != len(wanted) or any(g.min_id is None for g in groups):
            raise ValueError(
                f"the shards' row groups account for {planned} of the fold's {len(wanted)} "
                "ids (an id missing from the shards, or shards without id statistics): the fold "
                "cannot be streamed in equal shares"
            )
        return cls(tuple(columns), wanted, parts, split)

    @property
    def planned_bytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def shard(self, rank: int = 0, world: int = 1) -> StreamedShard:
        """What worker ``rank`` of ``world`` reads: an equal share of a training fold, or of a
        validation fold an exact part (every row read by exactly one worker; the parts' sizes
        differ by at most one row, and the counts are summed over workers once per epoch)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} of {world} workers")
        return StreamedShard(self, rank, world)


class StreamedShard:
    """One worker's view of a :class:`StreamedFold`, iterated like a Ray dataset shard."""

    def __init__(self, fold: StreamedFold, rank: int, world: int):
        self.fold, self.rank, self.world = fold, rank, world

    def slices(self, seed: int | None) -> list[tuple[shards.FoldPart, int, int]]:
        """This worker's reading list: (part, first row, end row) of the fold's rows in each part.

        The parts come in plan order, or with a seed in an order drawn from it (the same on every
        worker); a split fold gives this worker its equal share of that row sequence."""
        parts = list(self.fold.parts)
        if seed is not None:
            order = np.random.default_rng(seed).permutation(len(parts))
            parts = [parts[i] for i in order]
        total = sum(p.rows for p in parts)
        if self.fold.split:  # equal shares: DDP steps in lockstep, the remainder sits out
            per = total // self.world
            lo, hi = self.rank * per, (self.rank + 1) * per
        else:  # a partition: every row scored once
            lo, hi = self.rank * total // self.world, (self.rank + 1) * total // self.world
        out, start = [], 0
        for part in parts:
            end = start + part.rows
            if end > lo and start < hi:
                out.append((part, max(lo - start, 0), min(hi, end) - start))
            start = end
        return out

    def iter_torch_batches(
        self,
        *,
        batch_size: int,
        collate_fn: Callable,
        prefetch_batches: int = 2,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
    ) -> Iterator:
        """Batches of this worker's rows through ``collate_fn`` (a callable on a dict of columns,
        or a :class:`distributed.training.ray_data.RayCollate`), the way Ray's
        ``iter_torch_batches`` is
        called in ``distributed.training.loop``. With a shuffle buffer the parts' order and the
        rows'
        order come from ``local_shuffle_seed``; without one, rows come in plan order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        shuffle = bool(local_shuffle_buffer_size)
        seed = local_shuffle_seed if shuffle else None
        fn = getattr(collate_fn, "fn", collate_fn)  # RayCollate wraps a plain dict collate
        slices = self.slices(seed)
        rng = np.random.default_rng(seed) if shuffle else None
        buffer_rows = int(local_shuffle_buffer_size or 0)
        return _Pipeline(self.fold, slices, fn, batch_size, buffer_rows, rng, prefetch_batches)()


class _Pipeline:
    """Two daemon threads: parts -> tables (read), tables -> collated batches (shuffle, collate).

    Bounded queues between them; an error in either thread is raised in the consumer; a consumer
    that stops early (closes the generator) stops both threads."""

    def __init__(self, fold, slices, fn, batch_size, buffer_rows, rng, prefetch):
        self.fold, self.slices, self.fn = fold, slices, fn
        self.batch_size, self.buffer_rows, self.rng = batch_size, buffer_rows, rng
        self.tables: queue.Queue = queue.Queue(maxsize=2)
        self.batches: queue.Queue = queue.Queue(maxsize=max(1, int(prefetch)))
        self.stop = threading.Event()

    def _put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read_one(self, part: shards.FoldPart, lo: int, hi: int, value_set) -> pa.Table:
        table = shards.read_fold_part(part, self.fold.columns, value_set)
        if table.num_rows != part.rows:  # the plan's counts keep the shares equal
            raise RuntimeError(
                f"{part.file}: {table.num_rows} of the fold's rows in its planned row "
                f"groups, the plan counted {part.rows} (was the file rewritten?)"
            )
        return table.slice(lo, hi - lo)

    def _read(self) -> None:
        """Parts in order, READ_AHEAD of them fetched at once (an object store's latency)."""
        from concurrent.futures import ThreadPoolExecutor

        try:
            value_set = pa.array(self.fold.ids, pa.string())
            with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="fold-fetch") as pool:
                pending = []
                for args in self.slices:
                    pending.append(pool.submit(self._read_one, *args, value_set))
                    if len(pending) < READ_AHEAD:
                        continue
                    if not self._put(self.tables, pending.pop(0).result()):
                        break
                while pending and not self.stop.is_set():
                    if not self._put(self.tables, pending.pop(0).result()):
                        break
                for f in pending:
                    f.cancel()
            self._put(self.tables, _DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(self.tables, err)

    def _next_table(self):
        while not self.stop.is_set():
            try:
                return self.tables.get(timeout=0.1)
            except queue.Empty:
                continue
        return _DONE

    def _collate(self) -> None:
        try:
            rows: list[tuple[dict, int]] = []  # (a table's columns, row index)
            done = False
            while True:
                # fill: with a shuffle buffer, hold more than a batch beyond the buffer size
                need = self.batch_size + (self.buffer_rows if self.rng is not None else 0)
                while not done and len(rows) < need:
                    item = self._next_table()
                    if item is _DONE:
                        done = True
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        cols = arrow_columns(item)
                        rows += [(cols, i) for i in range(item.num_rows)]
                if not rows:
                    break
                if not done and len(rows) < need:
                    continue
                take = min(self.batch_size, len(rows))
                if self.rng is None:
                    chosen, rows = rows[:take], rows[take:]
                else:
                    chosen = []
                    for u in self.rng.random(take):  # without replacement: swap with the last
                        k = int(u * len(rows))
                        rows[k], rows[-1] = rows[-1], rows[k]
                        chosen.append(rows.pop())
                if not self._put(self.batches, self.fn(_batch(chosen))):
                    return
            self._put(self.batches, _DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(self.batches, err)

    def __call__(self) -> Iterator:
        threads = [
            threading.Thread(target=self._read, name="fold-read", daemon=True),
            threading.Thread(target=self._collate, name="fold-collate", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            while True:
                item = self.batches.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=10)


def _batch(rows: list[tuple[dict, int]]) -> dict:
    """The columns of some rows, each row from one table's :func:`arrow_columns`: payload views
    for binary columns, numpy arrays (of the tables' own dtypes) for the rest."""
    names = rows[0][0].keys()
    out = {}
    for name in names:
        first = rows[0][0][name]
        if isinstance(first, list):
            out[name] = [cols[name][i] for cols, i in rows]
        else:
            out[name] = np.concatenate([cols[name][i : i + 1] for cols, i in rows])
    return out
