"""Every script in ``benchmarks/`` runs end to end at toy sizes (``--smoke``), so none can rot.

Each script runs as a person runs it, ``python benchmarks/NAME.py --smoke`` from the repository
root, in its own process. The numbers are meaningless at these sizes: the test checks the exit
code and that the script printed its result line. A script that starts Ray starts its own local
instance; it gets a private, short ``RAY_TMPDIR`` (Ray's Unix sockets live under it, 107 bytes at
most), never the session instance's address.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Smoke:
    """One script's smoke run and what its output must hold."""

    script: str  # benchmarks/<script>.py
    result: str  # a regular expression for the script's result line (re.MULTILINE)
    timeout: int  # seconds for the whole run
    ray: bool = False  # starts a local Ray instance (in itself or in its children)
    mediapipe: bool = False  # needs the optional MediaPipe install (`make pose`)


SMOKES = [
    Smoke("detectors", r"^haar\s+\d+/10\s+\d+/10\s+\d+\.\d\d\s+1\.00x", 120),
    Smoke("feed", r"^\(a\) streamed training feed / plain pyarrow\s+\d+%", 600, ray=True),
    Smoke("fusion", r"^fused UAR / best branch UAR = (\d+\.\d\d|nan)x", 600, ray=True),
    Smoke("gesture", r"^  build / step: \d+\.\d\d%", 120),
    Smoke("local_mode", r"^local mode: wall \d+\.\d-\d+\.\d s over 1 fits", 600, ray=True),
    Smoke("facial_models", r"^ 1  2  2   32      4 \|.*\d\.\d\dx\s+\d\.\d\dx$", 120),
    Smoke("pipeline", r"^\(a\) preprocess 2 vs 1 Ray CPU\s+\d+\.\d\dx", 600, ray=True),
    Smoke("pose", r"^Ray 2 CPUs vs 1 CPU: \d+\.\d\dx", 600, ray=True, mediapipe=True),
    Smoke("search", r"^summary: TPE \+ ASHA needed a median", 600, ray=True),
    Smoke("storage", r"^streamed fold, one worker's reader .*\s\d+\.\d\d\s", 600, ray=True),
    Smoke("train", r"^2 workers vs 1: total clips/s\s+\d+\.\d\dx", 600, ray=True),
]


def _mediapipe_available() -> bool:
    from datasets.pose import mediapipe_available

    return mediapipe_available()


def _run(cmd: list[str], env: dict, timeout: int) -> tuple[int, str]:
    """(exit code, stdout + stderr); on timeout the whole process group (Ray's daemons started
    by the script included) is killed and the test fails with the output so far."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[1:])} ran over {timeout} s; last output:\n{out[-4000:]}")
    return proc.returncode, out


@pytest.mark.parametrize(
    "smoke",
    [pytest.param(s, id=s.script, marks=pytest.mark.timeout(s.timeout + 60)) for s in SMOKES],
)
def test_benchmark_smoke_run(smoke: Smoke):
    """``benchmarks/NAME.py --smoke`` exits 0 and prints its result line."""
    if smoke.mediapipe and not _mediapipe_available():
        pytest.skip("MediaPipe is not installed (optional; `make pose`)")
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a script's own instance, never the session's
    env.update(RAY_AUTH_MODE="disabled", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    # the run-from-root habit: with the repository on PYTHONPATH too, benchmarks/ comes first on
    # sys.path, and a script named like a package of ours would shadow it
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp") if smoke.ray else None
    if ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
    cmd = [sys.executable, str(Path("benchmarks") / f"{smoke.script}.py"), "--smoke"]
    t0 = time.perf_counter()
    try:
        code, out = _run(cmd, env, smoke.timeout)
    finally:
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    print(f"benchmarks/{smoke.script}.py --smoke: {seconds:.1f} s")  # shown with -s / -rP
    assert code == 0, f"exit code {code}; last output:\n{out[-4000:]}"
    assert re.search(smoke.result, out, re.MULTILINE), (
        f"no result line /{smoke.result}/ in the output:\n{out[-4000:]}"
    )


def test_no_benchmark_script_is_named_like_a_package_of_the_repository():
    """``python benchmarks/X.py`` puts benchmarks/ first on sys.path: ``benchmarks/models.py``
    once made ``import models.sistcm`` fail there."""
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert packages and not scripts & packages, scripts & packages
