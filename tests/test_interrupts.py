"""Ctrl-C and SIGTERM on ``tune`` and ``train`` (issue 26, finding 1): the command stops within
seconds, says in one line what it kept and the exact command that continues, exits 130 / 143,
writes no report that looks complete, and leaves no process behind (its local Ray included); a
second Ctrl-C ends it at once. The commands run as a user runs them: in a session of their own,
with a local Ray of their own, the signal sent to the whole process group as a terminal does.
(``preprocess``'s interrupts: ``tests/test_hostile_data.py``.)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from distributed import tune
from tests.procs import in_session

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]


class Command:
    """A CLI in a session of its own (its own local Ray: no RAY_ADDRESS), stdout to a file."""

    def __init__(self, module: str, argv: list[str], out: Path):
        self.ray_tmp = tempfile.mkdtemp(prefix="ri", dir="/tmp")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=self.ray_tmp, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        self.stdout = out
        with open(out, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *argv], cwd=ROOT, env=env,
                stdout=f, stderr=subprocess.PIPE, text=True, start_new_session=True,
            )  # fmt: skip

    def wait_for(self, ready, what: str, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            out = self.stdout.read_text()
            assert self.proc.poll() is None, (what, out, self.proc.stderr.read())
            assert time.monotonic() < deadline, (f"no {what} in {timeout} s", out)
            time.sleep(0.2)

    def signal(self, *signals: int, gap: float = 0.2) -> tuple[int, str, float]:
        """Send ``signals`` to the process group; (exit code, stderr, seconds to exit)."""
        t0 = time.monotonic()
        for s in signals:
            os.killpg(self.proc.pid, s)
            time.sleep(gap)
        try:
            err = self.proc.communicate(timeout=60)[1]
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.communicate()
        return self.proc.returncode, err, time.monotonic() - t0

    def left_behind(self) -> list[int]:
        """The session's processes still alive a few seconds after the command exited."""
        deadline = time.monotonic() + 10
        while (left := in_session(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:  # (so one failure does not leak into the next tests)
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        return left


def _one_line(err: str, start: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(start), err
    assert "Traceback" not in err
    return lines[0]


def test_ctrl_c_stops_a_search_in_one_line_without_a_report_and_resume_completes_it(
    gesture_shards, tmp_path, ray_session, capsys
):
    argv = ["gesture", "--smoke", "--shards", gesture_shards, "--folds", "1", "--samples", "2",
            "--epochs", "2", "--max-concurrent", "1", "--storage", str(tmp_path), "--name", "x",
            "--num-cpus", "2"]  # fmt: skip
    cmd = Command("distributed.tune", argv, tmp_path / "stdout.txt")
    cmd.wait_for(lambda: "trial 1/2 finished" in cmd.stdout.read_text(), "finished trial")
    code, err, seconds = cmd.signal(signal.SIGINT)
    assert cmd.left_behind() == []
    assert code == 130 and seconds < 30, (code, seconds, err)
    line = _one_line(err, "interrupted (SIGINT): ")
    assert re.search(r"outer fold 0: [12] of 2 trials finished", line), line
    assert "no report written" in line
    assert not (tmp_path / "x" / "results").exists()  # nothing that looks complete
    # the line's command continues the run to the end (here in the session's Ray)
    again = shlex.split(line.split("continue with: ", 1)[1])
    assert again[:3] == ["python", "-m", "distributed.tune"] and again[3:] == argv + ["--resume"]
    capsys.readouterr()
    assert tune.main(again[3:]) == 0
    report = (tmp_path / "x" / "results" / "report.md").read_text()
    assert "2 trials per outer fold, 2 trials in all" in report


def _train_argv(shards: str, out: Path, epochs: int) -> list[str]:
    return ["gesture", "--shards", shards, "--fold", "0", "--inner", "0", "--smoke", "--local",
            "--epochs", str(epochs), "--out", str(out), "--num-cpus", "2"]  # fmt: skip


def _first_checkpoint(out: Path):
    return lambda: any(out.glob("*/checkpoint_*/.complete"))


def test_sigterm_stops_a_local_fit_naming_its_checkpoint_and_the_command_that_resumes(
    gesture_shards, tmp_path
):
    argv = _train_argv(gesture_shards, tmp_path / "out", 12)
    cmd = Command("distributed.train", argv, tmp_path / "stdout.txt")
    cmd.wait_for(_first_checkpoint(tmp_path / "out"), "checkpoint")
    code, err, seconds = cmd.signal(signal.SIGTERM)
    assert cmd.left_behind() == []
    assert code == 143 and seconds < 30, (code, seconds, err)
    line = _one_line(err, "interrupted (SIGTERM): kept the checkpoint of epoch ")
    assert "no model written" in line
    assert not (tmp_path / "out" / "gesture-fold0-inner0" / "model.pt").exists()
    kept = Path(re.search(r"\(fold \d+\): ([^;]+);", line).group(1))
    assert (kept / ".complete").exists(), line  # the checkpoint it names is whole
    again = shlex.split(line.split("resumes from it: ", 1)[1])
    assert again[3:] == argv  # (that re-running resumes: tests/test_hostile_cli.py)


def test_a_second_ctrl_c_ends_at_once_and_takes_the_local_ray_with_it(gesture_shards, tmp_path):
    cmd = Command("distributed.train", _train_argv(gesture_shards, tmp_path / "out", 500),
                  tmp_path / "stdout.txt")  # fmt: skip
    cmd.wait_for(_first_checkpoint(tmp_path / "out"), "checkpoint")
    code, err, seconds = cmd.signal(signal.SIGINT, signal.SIGINT, gap=0.05)
    assert cmd.left_behind() == []
    assert code == 130 and seconds < 10, (code, seconds, err)
    assert "interrupted again (SIGINT): ended at once" in err and "Traceback" not in err
