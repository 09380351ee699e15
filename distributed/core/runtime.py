"""Shared Ray plumbing: starting or joining Ray, provenance, small CLI helpers."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from distributed.core.commands import signal_handlers_kept

REPO_ROOT = Path(__file__).resolve().parents[2]  # distributed/core/runtime.py -> the repository

log = logging.getLogger("emovis")


def git_commit() -> str:
    """The current git commit (``unknown`` outside a checkout), ``+dirty`` if modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if sha and dirty else "")


def init_ray(
    address: str | None = None,
    num_cpus: float | None = None,
    quiet: bool = True,
    log_to_driver: bool = True,
):
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``), else start a fresh local instance.

    ``log_to_driver=False`` keeps the workers' own output (native libraries' warnings) in Ray's
    worker log files instead of forwarding it to this process's console.

    A local instance gets this repository on its workers' ``PYTHONPATH`` (the packages are not
    installed into site-packages, see README); on a cluster, ``ray job submit --working-dir .``
    ships the code instead. Returns the ``ray`` module.
    """
    import ray

    if ray.is_initialized():
        return ray
    with signal_handlers_kept():  # ray.init makes SIGTERM a bare sys.exit
        _init(ray, address, num_cpus, quiet, log_to_driver)
    return ray


def _init(ray, address: str | None, num_cpus: float | None, quiet: bool, log_to_driver: bool):
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": logging.WARNING} if quiet else {}
    kwargs["log_to_driver"] = log_to_driver
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    code = {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}
    if address:
        # A job from `ray job submit --working-dir .` already ships the code; a driver joining a
        # cluster on this machine (or one sharing this path) points the workers at the checkout.
        in_submitted_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        ray.init(address=address, **kwargs, **({} if in_submitted_job else code))
    else:
        # address="local": never attach to a stale cluster by accident. The dashboard port is
        # chosen here and given to every worker as RAY_API_SERVER_ADDRESS: Ray's state API
        # (which Ray Train's placement-group cleaner uses to see that a stopped trial's
        # controller died) otherwise looks the instance up by scanning the machine's processes
        # and fails when another Ray instance runs there; the stopped trial's placement group
        # would then never be released.
        port = _free_port()
        code["runtime_env"]["env_vars"]["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # Ray 2.60 turns token authentication on for a local instance and logs a WARNING that
        # it did so at every start; the instance only listens on this machine, so that line is
        # kept off the console (quiet mode only).
        auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = auth.level
        if quiet:
            auth.setLevel(logging.ERROR)
        try:
            ray.init(address="local", num_cpus=num_cpus, dashboard_port=port, **kwargs, **code)
        finally:
            auth.setLevel(level)


def ray_data_console_quiet() -> None:
    """Ray Data's own lines ("Progress bars disabled", "Dataset ... execution finished") stay
    in its session log file (``ray-data.log``) and off this process's console."""
    import ray.data  # noqa: F401  (its import configures the handlers)

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.ERROR)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_cpus(default: float = 1.0) -> float:
    """CPUs Ray assigned to the current task or actor (``default`` outside Ray)."""
    import ray

    if not ray.is_initialized():
        return default
    return float(ray.get_runtime_context().get_assigned_resources().get("CPU", default))


def set_opencv_threads(cpus: float) -> int:
    """Give OpenCV's thread pool as many threads as the CPUs a task holds (at least 1).

    OpenCV otherwise starts one thread per core in every task, so tasks running side by side
    oversubscribe the machine and a second Ray CPU adds almost nothing; returns the count set."""
    import cv2

    threads = max(1, int(cpus))
    cv2.setNumThreads(threads)
    return threads


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def node_gpus() -> list[float]:
    """GPUs of each node of the cluster that is up now."""
    import ray

    return [float(n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]


def print_table(rows: list[tuple], header: tuple) -> str:
    """A plain-text table (returned and printed)."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, flush=True)
    return text
