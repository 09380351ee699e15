"""Shard schema round-trips (pyarrow and Ray Data) and atomic storage."""

import os

import numpy as np
import pytest

from branches.facial.data import FacialRow, facial_frames, facial_table
from branches.gesture.data import GestureRow, gesture_arrays, gesture_table
from datasets import shards, storage
from datasets.manifest import Counts, Manifest, read_manifest, write_manifest


def _facial_rows(n=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [
        FacialRow(
            id=f"s{i}/v",
            subject=f"s{i}",
            label=i % 2,
            label_name=["a", "b"][i % 2],
            frames=rng.integers(0, 256, (i + 1, size, size, 3), dtype=np.uint8),
            face_fraction=0.5,
            centre_cropped=bool(i % 2),
            source=f"/x/{i}.avi",
        )
        for i in range(n)
    ]


def _gesture_rows(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        GestureRow(
            id=f"g{i}",
            subject=f"s{i}",
            label=i,
            label_name=f"c{i}",
            joints=rng.normal(size=(5 + i, 4, 2)).astype(np.float32),
            confidence=rng.random((5 + i, 4)).astype(np.float32),
            layout="array",
            source="",
        )
        for i in range(n)
    ]


def test_facial_round_trip_pyarrow(tmp_path):
    rows = _facial_rows()
    shards.write_shard(facial_table(rows), shards.shard_path(str(tmp_path), 0))
    table = shards.read_table(str(tmp_path))
    assert table.schema.metadata[b"emovis.schema_version"] == str(shards.SCHEMA_VERSION).encode()
    for r, rec in zip(rows, table.to_pylist()):
        got = facial_frames(rec["frames"], rec["n_frames"], rec["size"])
        np.testing.assert_array_equal(got, r.frames)
        assert (rec["id"], rec["subject"], rec["label"], rec["source"]) == (
            r.id,
            r.subject,
            r.label,
            r.source,
        )


def test_gesture_round_trip_pyarrow(tmp_path):
    rows = _gesture_rows()
    shards.write_shard(gesture_table(rows), shards.shard_path(str(tmp_path), 3))
    for r, rec in zip(rows, shards.read_table(str(tmp_path)).to_pylist()):
        j, c = gesture_arrays(
            rec["joints"], rec["confidence"], rec["n_frames"], rec["n_joints"], rec["dims"]
        )
        np.testing.assert_array_equal(j, r.joints)
        np.testing.assert_array_equal(c, r.confidence)


def test_bad_frames_rejected():
    row = _facial_rows(1)[0]
    bad = FacialRow(**{**row.__dict__, "frames": row.frames.astype(np.float32)})
    with pytest.raises(ValueError, match="uint8"):
        facial_table([bad])


@pytest.mark.timeout(120)
def test_round_trip_through_ray_data(tmp_path, ray_session):
    rows = _facial_rows(5)
    shards.write_shard(facial_table(rows[:2]), shards.shard_path(str(tmp_path), 0))
    shards.write_shard(facial_table(rows[2:]), shards.shard_path(str(tmp_path), 1))
    ds = ray_session.data.read_parquet(shards.shard_files(str(tmp_path)))
    got = {}
    for batch in ds.iter_batches(batch_size=2, batch_format="numpy"):
        for i, payload, n, s in zip(batch["id"], batch["frames"], batch["n_frames"], batch["size"]):
            got[str(i)] = facial_frames(payload, n, s)
    assert sorted(got) == sorted(r.id for r in rows)
    for r in rows:
        np.testing.assert_array_equal(got[r.id], r.frames)


def test_atomic_write_leaves_no_temporaries(tmp_path):
    path = str(tmp_path / "a" / "f.bin")
    storage.atomic_write_bytes(path, b"hello")
    storage.atomic_write_bytes(path, b"world")
    assert open(path, "rb").read() == b"world"
    assert os.listdir(tmp_path / "a") == ["f.bin"]


def test_file_uri_storage(tmp_path):
    root = "file://" + str(tmp_path / "u")
    storage.makedirs(root)
    shards.write_shard(facial_table(_facial_rows(2)), shards.shard_path(root, 0))
    counts = Counts(2, 2, 0, 0, {"a": 1, "b": 1}, 2)
    write_manifest(root, Manifest("facial", ("a", "b"), {}, counts, None))
    assert storage.list_files(root)[0].startswith("file://")
    assert read_manifest(root).classes == ("a", "b")
    assert shards.read_table(root).num_rows == 2
    assert shards.read_table(str(tmp_path / "u")).num_rows == 2  # same files as a plain path


def test_manifest_version_checked(tmp_path):
    storage.atomic_write_bytes(str(tmp_path / "manifest.json"), b'{"schema_version": 99}')
    with pytest.raises(ValueError, match="schema version 99"):
        read_manifest(str(tmp_path))


def test_stale_temporaries_removed(tmp_path):
    (tmp_path / ".tmp-abc-shard-00000.parquet").write_bytes(b"torn")
    assert storage.remove_stale_temporaries(str(tmp_path)) == 1
    assert shards.shard_files(str(tmp_path)) == []
