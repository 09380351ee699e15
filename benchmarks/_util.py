"""Helpers shared by the benchmark scripts (not a benchmark itself).

Machine load, a private Ray temporary folder, subprocess environments for fresh local Ray
instances, and a sampler of the resident memory of a whole process tree read from ``/proc``
(psutil is not a dependency of this project).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def ensure_repo_on_path() -> None:
    """Put this repository first on ``sys.path`` (its ``datasets`` / ``distributed`` packages)."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def machine_load() -> str:
    """One line: CPU count and 1/5/15-minute load averages (the machine is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.2f} {five:.2f} {fifteen:.2f}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@contextmanager
def scratch_dir(keep: bool = False) -> Iterator[Path]:
    """A temporary folder for data and Ray's session files, removed afterwards unless ``keep``.

    The path is short on purpose: Ray puts Unix sockets under ``RAY_TMPDIR`` (107-byte limit).
    """
    path = Path(tempfile.mkdtemp(prefix="emb-", dir="/tmp"))
    try:
        yield path
    finally:
        if keep:
            print(f"(kept scratch folder {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


def ray_env(scratch: Path) -> dict[str, str]:
    """Environment for a child that starts its own local Ray: no cluster address inherited,
    session files in ``scratch/ray``, this repository importable by Ray's workers."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    (scratch / "ray").mkdir(exist_ok=True)
    env["RAY_TMPDIR"] = str(scratch / "ray")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def use_private_ray_tmp(scratch: Path) -> None:
    """Same as :func:`ray_env` for a Ray instance started in this process."""
    os.environ.update(ray_env(scratch))
    os.environ.pop("RAY_ADDRESS", None)


def start_ray(num_cpus: float, attempts: int = 3):
    """``distributed.core.runtime.init_ray`` on a fresh local instance, retried on a failed start.

    On a heavily loaded machine the raylet can die waiting for the dashboard agent's port file (a
    fixed 15 s limit in Ray 2.60, ray-project/ray#65983), and ``ray.init`` then fails with "The
    current node timed out during startup". That is the machine, not the job: try again.
    """
    import ray

    from distributed.core.runtime import init_ray

    for attempt in range(1, attempts + 1):
        try:
            return init_ray(None, num_cpus)
        except Exception as e:  # Ray raises a bare Exception here
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(e):
                raise
            print(f"(Ray failed to start, attempt {attempt}: {e}; retrying)", flush=True)
            time.sleep(2)


# ---------------------------------------------------------------------------------------------
# Memory of a process tree, from /proc


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # the process ended while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after ")".
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (children of children, ...), alive right now."""
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def _pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class TreeMemory:
    """Peaks over the samples of a process tree's memory.

    ``peak_rss``: the largest sum of the processes' resident set sizes (shared pages, e.g. Ray's
    object store and libraries, count once per process that maps them, so this overstates real
    use). ``peak_pss``: the largest sum of proportional set sizes (shared pages divided among the
    processes sharing them; closer to the RAM the tree really holds).
    """

    peak_rss: int = 0
    peak_pss: int = 0
    processes_at_peak: int = 0
    max_processes: int = 0
    samples: int = 0


class TreeSampler:
    """Sample the memory of ``pid``'s process tree every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1, pss: bool = True):
        self.pid, self.interval, self.pss = pid, interval, pss
        self.result = TreeMemory()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = pss = n = 0
        for pid in process_tree(self.pid):
            try:
                rss += _rss_bytes(pid)
                pss += _pss_bytes(pid) if self.pss else 0
                n += 1
            except (OSError, ValueError, IndexError):  # ended between listing and reading
                continue
        r = self.result
        r.samples += 1
        r.max_processes = max(r.max_processes, n)
        if rss > r.peak_rss:
            r.peak_rss, r.processes_at_peak = rss, n
        r.peak_pss = max(r.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


if __name__ == "__main__":  # `make bench` runs every file in this folder
    print("benchmarks/_util.py: helpers for the other benchmark scripts; nothing to measure.")
