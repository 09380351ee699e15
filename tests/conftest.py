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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Object storage (tests/test_s3.py) is a local S3-compatible server on 127.0.0.1 (moto), started
# only by the tests that ask for it. Its address and dummy credentials are set here, before the
# session's Ray instance starts, because Ray's workers inherit the environment the instance was
# started with; and they are set for every test, so that no test can ever reach a real bucket
# with a developer's own credentials.
# (Test modules import this file again as ``tests.conftest``: keep the first choice.)
S3_ENDPOINT = os.environ.get("EMOVIS_TEST_S3_ENDPOINT") or f"http://127.0.0.1:{_free_port()}"
S3_PORT = int(S3_ENDPOINT.rsplit(":", 1)[1])
os.environ["EMOVIS_TEST_S3_ENDPOINT"] = S3_ENDPOINT
for _key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN"):
    os.environ.pop(_key, None)
os.environ.update(
    AWS_ENDPOINT_URL=S3_ENDPOINT,
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",  # no instance-role lookups from the tests
    AWS_SHARED_CREDENTIALS_FILE=os.path.join(os.environ["RAY_TMPDIR"], "no-aws-credentials"),
    AWS_CONFIG_FILE=os.path.join(os.environ["RAY_TMPDIR"], "no-aws-config"),
)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance for the whole session (4 logical CPUs on this 2-core machine)."""
    from distributed.core.runtime import init_ray

    ray = init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """The local S3-compatible server (moto's threaded server) at ``S3_ENDPOINT``; returns a
    function that creates a bucket and gives its ``s3://`` URI."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()

    def bucket(name: str) -> str:
        import pyarrow.fs as pafs

        # (the constructor ignores AWS_ENDPOINT_URL; resolving an s3:// URI reads it)
        pafs.S3FileSystem(endpoint_override=S3_ENDPOINT, allow_bucket_creation=True).create_dir(
            name
        )
        return f"s3://{name}"

    yield bucket
    server.stop()


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
