"""Shared fixtures: one Ray instance per test session, small generated data sets."""

from __future__ import annotations

import os
import tempfile

import pytest

# Ray writes session folders under RAY_TMPDIR; keep the path short (Unix socket length limit).
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the session instance is loopback-only
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance for the whole session (4 logical CPUs on this 2-core machine)."""
    from distributed.common import init_ray

    ray = init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


def stored_protocol(root, key: str = "subjects") -> dict:
    """A protocol file as written (``SHARDS/protocols/KEY.json``)."""
    import json
    from pathlib import Path

    return json.loads((Path(root) / "protocols" / f"{key}.json").read_text())


def _preprocess(kind, source, out, *extra):
    from distributed import preprocess

    argv = [
        kind,
        "--source",
        str(source),
        "--out",
        str(out),
        "--folds",
        "3",
        "--inner-folds",
        "2",
        *extra,
    ]
    assert preprocess.main(argv) == 0
    return str(out)


@pytest.fixture(scope="session")
def gesture_shards(tmp_path_factory, ray_session):
    """Synthetic gestures (6 subjects x 6 classes x 3) preprocessed into shards."""
    from datasets.synthetic_gesture import write_gesture_set

    root = tmp_path_factory.mktemp("gesture-data")
    write_gesture_set(root / "raw", n_subjects=6, per_class=3, seed=0)
    return _preprocess("gesture", root / "raw", root / "shards")


@pytest.fixture(scope="session")
def facial_pair_shards(tmp_path_factory, ray_session):
    """Synthetic faces of the onset/offset pair only (open_mouth vs close_mouth: the same frames
    in opposite order), 6 subjects x 3 videos, cropped to 48 px."""
    import shutil

    from datasets.synthetic import write_facial_set

    root = tmp_path_factory.mktemp("facial-data")
    write_facial_set(root / "raw", n_subjects=6, per_class=3, seed=0, size=96, n_frames=12)
    for label in ("narrow_eyes", "raise_brows"):
        shutil.rmtree(root / "raw" / label)
    return _preprocess("facial", root / "raw", root / "shards", "--size", "48")
