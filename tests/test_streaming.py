"""Folds over the materialisation budget: streamed rows, row-group skipping, task thread counts."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from branches.facial.data import FacialRow, facial_table
from datasets import shards
from datasets.manifest import read_manifest, read_protocol
from distributed.core.config import default_config
from distributed.training.launch import FoldSpec, materialize_budget, prepare_datasets
from distributed.training.ray_data import RayCollate, make_collate
from distributed.training.stream import StreamedFold

pytestmark = pytest.mark.timeout(240)


class CountingFile(io.FileIO):
    """A real file that counts the bytes read through it."""

    def __init__(self, path):
        super().__init__(path, "rb")
        self.bytes_read = 0

    def read(self, n=-1):
        data = super().read(n)
        self.bytes_read += len(data)
        return data

    def readinto(self, b):
        n = super().readinto(b)
        self.bytes_read += n or 0
        return n


def _big_rows(n, frames=8, size=160, seed=0):
    """Rows of ~600 kB of noise each (incompressible: stored bytes are the payload)."""
    rng = np.random.default_rng(seed)
    return [
        FacialRow(
            id=f"v{i:03d}",
            subject=f"s{i % 7}",
            label=i % 3,
            label_name="abc"[i % 3],
            frames=rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
            face_fraction=1.0,
            centre_cropped=False,
            source=f"/x/{i}.avi",
        )
        for i in range(n)
    ]


def test_row_groups_are_sized_in_bytes():
    big = facial_table(_big_rows(2))
    assert shards.row_group_rows(big) == 1  # a video of ~600 kB is a group of its own
    small = facial_table(_big_rows(100, frames=1, size=4))
    assert shards.row_group_rows(small) == 64


def test_a_fold_of_one_fifth_reads_one_fifth_of_the_bytes(tmp_path):
    rows = _big_rows(40)
    root = str(tmp_path / "shards")
    for k in range(4):  # 4 files of 10 id-sorted rows, as preprocessing plans them
        shards.write_shard(facial_table(rows[10 * k : 10 * k + 10]), shards.shard_path(root, k))
    ids = [r.id for r in np.random.default_rng(1).permutation(rows)[:8]]  # 1/5, scattered
    columns = ["id", "label", "n_frames", "size", "frames"]
    groups = [g for f in shards.shard_files(root) for g in shards.row_groups(f, columns)]
    plan = shards.fold_plan(groups, ids)
    assert sum(p.group_rows for p in plan) == len(ids) == sum(p.rows for p in plan)

    total = sum(os.path.getsize(f) for f in shards.shard_files(root))
    got, read = [], 0
    for part in plan:
        with CountingFile(part.file) as f:
            got.append(shards.read_fold_part(part, columns, ids, source=f))
            read += f.bytes_read
    # Reference: read everything, keep the fold's rows.
    every = shards.read_table(root, columns)
    expected = every.filter(pc.is_in(every["id"], value_set=pa.array(ids)))
    table = pa.concat_tables(got).sort_by("id")
    assert table.equals(expected.sort_by("id"))
    frames = sum(len(r.frames.tobytes()) for r in rows if r.id in set(ids))
    assert frames <= read <= 1.05 * frames + 64 * 1024  # the fold's payloads, footers, no more
    assert read < 0.25 * total


def _gesture_fold(root):
    manifest = read_manifest(root)
    protocol = read_protocol(root, manifest)[1]
    split = protocol.fold(0).inner[0]
    return manifest, protocol, split


def _epoch_rows(ds, cfg, epoch, forbidden=frozenset()):
    """[(id, label, checksum of its joints)] of one pass as a training worker reads it."""
    import torch

    fn = make_collate(cfg, True, epoch, forbidden).fn
    names: list[str] = []  # row id of each index
    lock = threading.Lock()  # collates may run on several threads

    def collate(batch):
        out = fn(batch)
        with lock:
            start = len(names)
            names.extend(str(i) for i in batch["id"])
        idx = torch.arange(start, start + len(batch["id"]))
        return {"i": idx, "y": out["y"], "sum": out["joints"].double().sum(dim=(1, 2, 3))}

    seen = []
    for b in ds.iter_torch_batches(
        batch_size=cfg.batch_size,
        collate_fn=RayCollate(collate),
        prefetch_batches=2,
        local_shuffle_buffer_size=4 * cfg.batch_size,
        local_shuffle_seed=cfg.seed * 100003 + epoch,
    ):
        seen += list(zip(b["i"].tolist(), b["y"].tolist(), b["sum"].tolist()))
    assert len(seen) == len(names)
    return sorted((names[i], y, s) for i, y, s in seen)


def test_streamed_fold_gives_the_rows_of_the_materialised_one(gesture_shards, ray_session):
    from ray.data.dataset import MaterializedDataset

    manifest, protocol, split = _gesture_fold(gesture_shards)
    test_ids = frozenset(protocol.fold(0).test)
    spec = FoldSpec(split.train, split.val)
    streamed = prepare_datasets(gesture_shards, [spec], test_ids, materialize_bytes=0)
    held = prepare_datasets(gesture_shards, [spec], test_ids, materialize_bytes=float("inf"))
    assert isinstance(streamed.datasets["train0"], StreamedFold)
    assert isinstance(held.datasets["train0"], MaterializedDataset)
    cfg = default_config("gesture", batch_size=5)
    for epoch in (0, 1):
        a = _epoch_rows(streamed.datasets["train0"].shard(0, 1), cfg, epoch)
        b = _epoch_rows(held.datasets["train0"], cfg, epoch)
        assert a == b
        assert [r[0] for r in a] == sorted(split.train)  # every row once, no other row
    # the forbidden-id guard still fires on a streamed fold
    one = frozenset([sorted(split.train)[3]])
    with pytest.raises(Exception, match=sorted(one)[0]):
        _epoch_rows(streamed.datasets["train0"].shard(0, 1), cfg, 0, forbidden=one)


def test_budget_comes_from_the_argument_the_environment_or_two_gib(monkeypatch):
    monkeypatch.delenv("EMOVIS_MATERIALIZE_GIB", raising=False)
    assert materialize_budget() == 2 * 2**30
    monkeypatch.setenv("EMOVIS_MATERIALIZE_GIB", "0.5")
    assert materialize_budget() == 2**29
    assert materialize_budget(0) == 0
    monkeypatch.setenv("EMOVIS_MATERIALIZE_GIB", "lots")
    with pytest.raises(ValueError, match="EMOVIS_MATERIALIZE_GIB"):
        materialize_budget()


def test_opencv_threads_follow_the_cpus_a_task_holds(ray_session):
    import ray

    from distributed.core.runtime import set_opencv_threads, task_cpus

    def threads(_=None):
        import cv2

        set_opencv_threads(task_cpus())
        return cv2.getNumThreads()

    # 1 CPU: the way the preprocessing job runs its shard tasks
    one = ray.remote(num_cpus=1)(threads)
    two = ray.remote(num_cpus=2)(threads)
    assert ray.get([one.remote(), two.remote()]) == [1, 2]
