"""Streamed folds read by the workers themselves: equal disjoint shares, exact rows, shuffling
from the seed, errors and early stops, and a 2-worker DDP fit over a streamed fold."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from datasets import shards
from datasets.manifest import read_manifest, read_protocol
from distributed.training.stream import StreamedFold
from tests import faults

pytestmark = pytest.mark.timeout(300)

COLUMNS = ("id", "label", "n_frames", "n_joints", "dims", "joints", "confidence")


def _plan(root, ids, split=True):
    groups = [g for f in shards.shard_files(root) for g in shards.row_groups(f, COLUMNS)]
    return StreamedFold.plan(groups, COLUMNS, ids, split)


def _reference(root, ids) -> dict[str, tuple]:
    """id -> (label, joints bytes) of the fold's rows, from one plain read of every shard."""
    table = shards.read_table(root, list(COLUMNS))
    table = table.filter(pc.is_in(table["id"], value_set=pc.cast(list(ids), "string")))
    return {
        i: (lab, bytes(j))
        for i, lab, j in zip(
            table["id"].to_pylist(), table["label"].to_pylist(), table["joints"].to_pylist()
        )
    }


def _identity(batch):
    """A collate that returns the batch's rows as (id, label, joints bytes)."""
    return [
        (str(i), int(lab), bytes(j))
        for i, lab, j in zip(batch["id"], batch["label"], batch["joints"])
    ]


def _rows(shard, batch=4, seed=None, buffer=None):
    out, sizes = [], []
    for b in shard.iter_torch_batches(
        batch_size=batch,
        collate_fn=_identity,
        local_shuffle_buffer_size=buffer,
        local_shuffle_seed=seed,
    ):
        out += b
        sizes.append(len(b))
    return out, sizes


@pytest.fixture(scope="module")
def fold(gesture_shards):
    manifest = read_manifest(gesture_shards)
    split = read_protocol(gesture_shards, manifest)[1].fold(0).inner[0]
    return gesture_shards, tuple(split.train)


def test_one_worker_reads_exactly_the_folds_rows_in_plan_order(fold):
    root, ids = fold
    ref = _reference(root, ids)
    streamed = _plan(root, ids)
    rows, sizes = _rows(streamed.shard(0, 1), batch=5)
    assert [r[0] for r in rows] == sorted(ids)  # shards are id-sorted: plan order is id order
    assert {r[0]: r[1:] for r in rows} == ref  # payloads and labels as stored
    assert sizes == [5] * (len(ids) // 5) + ([len(ids) % 5] if len(ids) % 5 else [])
    assert streamed.planned_bytes < sum(g.nbytes for f in shards.shard_files(root)
                                        for g in shards.row_groups(f, COLUMNS))  # fmt: skip


@pytest.mark.parametrize("world", [2, 3])
def test_workers_get_equal_disjoint_shares_that_change_every_epoch(fold, world):
    root, ids = fold
    ref = _reference(root, ids)
    streamed = _plan(root, ids)
    per = len(ids) // world
    epochs = []
    for seed in (11, 12):
        shares = [_rows(streamed.shard(r, world), seed=seed, buffer=8)[0] for r in range(world)]
        assert [len(s) for s in shares] == [per] * world  # DDP steps stay in lockstep
        seen = [r[0] for s in shares for r in s]
        assert len(set(seen)) == len(seen) == per * world  # disjoint, each row at most once
        assert all(ref[r[0]] == r[1:] for s in shares for r in s)
        epochs.append([r[0] for r in shares[0]])
    assert epochs[0] != epochs[1]  # another epoch's seed, another order and share
    # the same seed gives the same share in the same order (exact resume, same batches)
    again = _rows(streamed.shard(0, world), seed=11, buffer=8)[0]
    assert [r[0] for r in again] == epochs[0]


def test_validation_folds_are_partitioned_every_row_scored_once(fold):
    """Validation is split across workers without dropping a row: the workers' parts are
    consecutive runs of the plan's order, differ in size by at most one and cover every id."""
    root, ids = fold
    whole = _plan(root, ids, split=False)
    for world in (1, 2, 3):
        parts = [[r[0] for r in _rows(whole.shard(rank, world))[0]] for rank in range(world)]
        assert sum(parts, []) == sorted(ids)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_the_shuffle_buffer_mixes_rows_beyond_one_part(fold):
    root, ids = fold
    streamed = _plan(root, ids)
    order = [r[0] for r in _rows(streamed.shard(0, 1), seed=3, buffer=16)[0]]
    assert sorted(order) == sorted(ids) and order != sorted(ids)
    # rows of one file are not all delivered together: the first batch draws from several parts
    file_of = {}
    for part in streamed.parts:
        table = shards.read_fold_part(part, ["id"], ids)
        file_of.update({i: part.file for i in table["id"].to_pylist()})
    assert len({file_of[i] for i in order[:4]}) > 1


def test_ids_missing_from_the_shards_are_refused_when_planning_or_reading(fold):
    root, ids = fold
    with pytest.raises(ValueError, match="account for"):
        _plan(root, (*ids, "zzz/after-every-row-group"))  # in no group's id range
    # inside a group's id range, only reading the group shows it is not there
    inside = sorted(ids)[0] + "-not-stored"
    streamed = _plan(root, (*ids, inside))
    with pytest.raises(RuntimeError, match="the plan counted"):
        _rows(streamed.shard(0, 1))


def _pipeline_threads():
    return [t for t in threading.enumerate() if t.name in ("fold-read", "fold-collate")]


def test_a_read_error_reaches_the_consumer_and_an_early_stop_ends_the_threads(fold, tmp_path):
    root, ids = fold
    copy = tmp_path / "shards"
    shutil.copytree(root, copy)
    streamed = _plan(str(copy), ids)
    it = streamed.shard(0, 1).iter_torch_batches(batch_size=2, collate_fn=_identity)
    next(it)
    it.close()  # the consumer stops early: both threads end
    assert not _pipeline_threads()
    os.remove(streamed.parts[-1].file)  # the last part vanishes after planning
    with pytest.raises(FileNotFoundError, match=os.path.basename(streamed.parts[-1].file)):
        _rows(streamed.shard(0, 1))
    assert not _pipeline_threads()


def test_ddp_over_a_streamed_fold_keeps_the_workers_in_step(gesture_shards, tmp_path, ray_session):
    from distributed.core.config import default_config
    from distributed.training.launch import FoldSpec, Resources, fit_folds, prepare_datasets

    manifest = read_manifest(gesture_shards)
    outer = read_protocol(gesture_shards, manifest)[1].fold(0)
    split = outer.inner[0]
    data = prepare_datasets(
        gesture_shards, [FoldSpec(split.train, split.val)], frozenset(outer.test), 0
    )
    assert isinstance(data.datasets["train0"], StreamedFold)
    cfg = default_config("gesture", epochs=3, rep_size=32, rep_length=48, width=16,
                         se_reduction=4, batch_size=5, lr=1e-2)  # fmt: skip
    dump = tmp_path / "params"
    dump.mkdir()
    fit = fit_folds(
        cfg,
        data,
        resources=Resources(workers=2, cpus_per_worker=0.5),
        storage_path=str(tmp_path),
        name="streamed-ddp",
        loop=faults.dumping_params(str(dump)),
    )
    a = torch.load(dump / "fold0-rank0.pt", weights_only=True)
    b = torch.load(dump / "fold0-rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the same steps on both ranks: identical weights
    df = fit.history
    assert list(df["epoch"]) == [0, 1, 2]
    assert (df["train_n"] == 2 * (len(split.train) // 2)).all()  # two equal shares
    assert (df["val_n"] == len(split.val)).all()
    assert np.isfinite(df["train_loss"]).all()
