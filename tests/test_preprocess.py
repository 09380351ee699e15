"""The preprocessing job (Ray tasks) end to end: shards, manifest, resume, bad items."""

import json
import os
import shutil

import numpy as np
import pytest

from branches.facial.data import facial_frames
from datasets import manifest as manifest_mod
from datasets import shards
from distributed import preprocess
from distributed.preprocessing.tasks import SUMMARY_SUFFIX
from tests.conftest import stored_protocol

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def facial_source(tmp_path_factory):
    from datasets.synthetic import write_facial_set

    root = tmp_path_factory.mktemp("faces")
    write_facial_set(root, n_subjects=4, per_class=1, seed=1)
    return root


@pytest.fixture(scope="module")
def gesture_source(tmp_path_factory):
    from datasets.synthetic_gesture import write_gesture_set

    root = tmp_path_factory.mktemp("gestures")
    write_gesture_set(root, n_subjects=4, per_class=2, seed=2)
    return root


def _manifest(out) -> dict:
    """manifest.json as written (the file format itself is under test here)."""
    return json.loads((out / "manifest.json").read_text())


def _run(kind, source, out, *extra):
    argv = [
        kind,
        "--source",
        str(source),
        "--out",
        str(out),
        "--per-shard",
        "3",
        "--folds",
        "2",
        "--inner-folds",
        "2",
        *extra,
    ]
    return preprocess.main(argv)


def test_facial_job_writes_shards_and_manifest(facial_source, tmp_path, ray_session, capsys):
    out = tmp_path / "shards"
    assert _run("facial", facial_source, out, "--size", "48") == 0
    printed = capsys.readouterr().out
    assert "rows written" in printed
    manifest = _manifest(out)
    table = shards.read_table(str(out))
    n_items = sum(1 for p in facial_source.rglob("*") if p.is_file())
    assert table.num_rows == manifest["counts"]["written"] == n_items
    assert manifest["counts"]["skipped"] == 0
    assert manifest["options"]["size"] == 48 and manifest["options"]["detector"] == "haar"
    assert manifest["git_commit"]
    # Frames decode to (n, 48, 48, 3) uint8; the Haar detector found faces in most frames.
    for rec in table.to_pylist():
        frames = facial_frames(rec["frames"], rec["n_frames"], rec["size"])
        assert frames.shape[1:] == (48, 48, 3) and frames.dtype == np.uint8
        assert manifest["classes"][rec["label"]] == rec["label_name"]
    assert np.mean(table["face_fraction"].to_numpy()) > 0.5
    # Folds: every row in exactly one outer test fold; no subject on both sides of any split.
    subject = dict(zip(table["id"].to_pylist(), table["subject"].to_pylist()))
    tests = [i for f in stored_protocol(out)["outer"] for i in f["test"]]
    assert sorted(tests) == sorted(subject)
    for f in stored_protocol(out)["outer"]:
        assert not {subject[i] for i in f["train"]} & {subject[i] for i in f["test"]}
        for inner in f["inner"]:
            assert not {subject[i] for i in inner["train"]} & {subject[i] for i in inner["val"]}
            assert not set(inner["train"] + inner["val"]) & set(f["test"])


def test_resume_keeps_finished_shards_and_leaves_no_duplicates(
    gesture_source, tmp_path, ray_session
):
    out = tmp_path / "g"
    assert _run("gesture", gesture_source, out) == 0
    first = shards.read_table(str(out)).sort_by("id")
    files = shards.shard_files(str(out))
    assert len(files) >= 3
    kept = files[:-1] + [f + SUMMARY_SUFFIX for f in files[:-1]]
    kept_mtimes = [os.stat(f).st_mtime_ns for f in kept]
    # Simulate an interrupted run: one shard lost with its summary, a torn temporary left behind.
    os.remove(files[-1])
    os.remove(files[-1] + SUMMARY_SUFFIX)
    (out / ".tmp-123-shard-00001.parquet").write_bytes(b"torn")
    assert _run("gesture", gesture_source, out) == 0
    again = shards.read_table(str(out)).sort_by("id")
    assert again.equals(first)
    # nothing decoded twice: no finished shard (nor its summary) was written again
    assert [os.stat(f).st_mtime_ns for f in kept] == kept_mtimes
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
    manifest = _manifest(out)
    assert manifest["num_joints"] == 25 and manifest["kind"] == "gesture"


def test_resume_refuses_other_source(gesture_source, tmp_path, ray_session, capsys):
    out = tmp_path / "g"
    assert _run("gesture", gesture_source, out) == 0
    other = tmp_path / "other"
    shutil.copytree(gesture_source, other)
    victim = next(other.rglob("*.npz"))
    victim.unlink()
    assert _run("gesture", other, out) == 2
    assert "planned from other items" in capsys.readouterr().err


def test_bad_items_are_skipped_counted_and_reported(facial_source, tmp_path, ray_session, capsys):
    src = tmp_path / "src"
    shutil.copytree(facial_source, src)
    label = sorted(p.name for p in src.iterdir() if p.is_dir())[0]
    (src / label / "zz1_empty.avi").write_bytes(b"")
    (src / label / "zz2_text.mp4").write_text("this is not a video\n")
    out = tmp_path / "s"
    assert _run("facial", src, out, "--size", "32") == 0
    captured = capsys.readouterr()
    manifest = _manifest(out)
    skipped = {os.path.basename(p): reason for p, reason in manifest["skipped"]}
    assert set(skipped) == {"zz1_empty.avi", "zz2_text.mp4"}
    assert "zz2_text.mp4" in captured.out  # the summary lists it
    good = sum(1 for p in facial_source.rglob("*") if p.is_file())
    assert manifest["counts"]["written"] == good and manifest["counts"]["skipped"] == 2


def test_a_shard_that_cannot_be_written_stops_the_job_naming_it_and_resume_finishes(
    gesture_source, tmp_path, ray_session, capsys
):
    out = tmp_path / "s"
    # a folder where shard 1's file must go: its rename fails in the task (not an item's fault)
    blocker = shards.shard_path(str(out), 1)
    os.makedirs(blocker)
    assert _run("gesture", gesture_source, out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {blocker}: this shard failed") and "resumes" in err
    assert not (out / "manifest.json").exists()
    os.rmdir(blocker)
    assert _run("gesture", gesture_source, out) == 0
    n_items = sum(1 for p in gesture_source.rglob("*") if p.is_file())
    assert _manifest(out)["counts"]["written"] == n_items
    assert len(shards.read_table(str(out), columns=["id"])) == n_items


def test_nothing_usable_fails(tmp_path, ray_session, capsys):
    for label in ("happy", "sad"):
        (tmp_path / "bad" / label).mkdir(parents=True)
    (tmp_path / "bad" / "happy" / "s1_a.avi").write_bytes(b"")
    (tmp_path / "bad" / "sad" / "s2_b.mp4").write_text("nope")
    assert _run("facial", tmp_path / "bad", tmp_path / "out") != 0
    err = capsys.readouterr().err
    assert "s1_a.avi" in err and "s2_b.mp4" in err


def test_empty_source_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _run("facial", tmp_path / "empty", tmp_path / "out") == 2
    assert "empty" in capsys.readouterr().err


def test_manifest_is_json_with_counts(gesture_source, tmp_path, ray_session):
    out = tmp_path / "m"
    assert _run("gesture", gesture_source, out) == 0
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["schema_version"] == manifest_mod.SCHEMA_VERSION
    assert set(doc["counts"]) >= {"read", "written", "skipped", "centre_cropped", "per_class"}
