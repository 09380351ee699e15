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
