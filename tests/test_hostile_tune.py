"""What a hostile user found resuming ``tune`` (issue 26), each now a test: ``--resume`` on other
shards or another seed, ``--resume`` of a run that does not exist, a second driver on a running
search, and the lock a killed driver leaves behind. Each misuse ends with one line ``error: ...``
and exit code 2, before Ray starts (``distributed.search.run_record`` holds the checks).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from distributed import tune
from distributed.search import run_record
from tests.lines import one_line_error

pytestmark = pytest.mark.timeout(300)

RAY_STARTED = "Ray work started"


@pytest.fixture
def no_ray_work(monkeypatch):
    """Anything that would start Ray, read a fold into Ray or start a fit fails the test."""
    from distributed.core import runtime
    from distributed.search import driver  # (it binds launch's names on import)
    from distributed.training import launch

    def refuse(*args, **kwargs):
        raise AssertionError(f"{RAY_STARTED}: the misuse was not refused first")

    monkeypatch.setattr(runtime, "init_ray", refuse)
    for module in (launch, driver):
        monkeypatch.setattr(module, "prepare_datasets", refuse)
        monkeypatch.setattr(module, "fit_folds", refuse)


def _argv(shards: str, storage: Path, *extra: str) -> list[str]:
    return ["gesture", "--smoke", "--shards", shards, "--folds", "1", "--samples", "1",
            "--epochs", "1", "--max-concurrent", "1", "--storage", str(storage),
            "--name", "x", *extra]  # fmt: skip


def _reaches_ray(argv: list[str]) -> None:
    """Run ``tune`` up to the point where Ray would start (``no_ray_work`` stops it there)."""
    with pytest.raises(AssertionError, match=RAY_STARTED):
        tune.main(argv)


@pytest.fixture
def other_shards(gesture_shards, tmp_path) -> str:
    """A copy of the session's gesture shards whose manifest names another source: other data."""
    copy = tmp_path / "shards-b"
    shutil.copytree(gesture_shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"] = str(tmp_path / "other-raw")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return str(copy)


def test_resume_of_a_run_that_does_not_exist_is_refused(
    gesture_shards, tmp_path, no_ray_work, capfd
):
    capfd.readouterr()
    assert tune.main(_argv(gesture_shards, tmp_path, "--resume")) == 2
    one_line_error(capfd.readouterr().err, "no run", str(tmp_path / "x"), "--resume")
    assert not (tmp_path / "x").exists()  # nothing was created for it


def test_resume_on_other_shards_or_seed_is_refused_before_ray(
    gesture_shards, other_shards, tmp_path, no_ray_work, capfd
):
    _reaches_ray(_argv(gesture_shards, tmp_path))  # the run starts: its inputs are recorded
    assert json.loads((tmp_path / "x" / run_record.SEARCH_FILE).read_text())["fingerprint"]
    capfd.readouterr()
    assert tune.main(_argv(other_shards, tmp_path, "--resume")) == 2
    one_line_error(capfd.readouterr().err, "shards:", gesture_shards, other_shards)
    assert tune.main(_argv(gesture_shards, tmp_path, "--resume", "--seed", "1")) == 2
    one_line_error(capfd.readouterr().err, "--seed: 0 when the run started, 1 now")
    assert tune.main(_argv(gesture_shards, tmp_path, "--resume", "--epochs", "2")) == 2
    one_line_error(capfd.readouterr().err, "epochs: 1 when the run started, 2 now")
    # the same inputs from a copy of the same data in another folder are the same run
    same = tmp_path / "moved"
    shutil.copytree(gesture_shards, same)
    _reaches_ray(_argv(str(same), tmp_path, "--resume"))
    assert not (tmp_path / "x" / run_record.LOCK_FILE).exists()  # released on the error too


def test_a_second_driver_is_refused_naming_the_holder(gesture_shards, tmp_path, no_ray_work, capfd):
    _reaches_ray(_argv(gesture_shards, tmp_path))
    lock = tmp_path / "x" / run_record.LOCK_FILE
    for host, pid in ((socket.gethostname(), os.getpid()), ("other-node", 1)):
        lock.write_text(json.dumps({"host": host, "pid": pid, "started": time.time()}))
        capfd.readouterr()
        assert tune.main(_argv(gesture_shards, tmp_path, "--resume")) == 2
        one_line_error(capfd.readouterr().err, "another driver", f"host {host}, pid {pid}")
        assert json.loads(lock.read_text())["pid"] == pid  # the holder's lock is left alone


def test_a_killed_drivers_lock_is_taken_over(gesture_shards, tmp_path, no_ray_work, capfd):
    _reaches_ray(_argv(gesture_shards, tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid is not running
    lock = tmp_path / "x" / run_record.LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0}))
    capfd.readouterr()
    _reaches_ray(_argv(gesture_shards, tmp_path, "--resume"))
    out = capfd.readouterr()
    assert f"taking over {lock}" in out.out + out.err and f"pid {dead.pid}" in out.out + out.err
    assert not lock.exists()  # taken over, then released when the driver ended


def test_lock_and_record_on_s3(s3_server):
    root = s3_server("emovis-tune-lock") + "/run"
    held = run_record.acquire(root)
    with pytest.raises(run_record.UsageError, match=f"pid {os.getpid()}"):
        run_record.acquire(root)
    run_record.release(held)
    run_record.release(run_record.acquire(root))
    now = {"shards": {"digest": "a", "rows": 3, "path": "A"}, "seed": 0, "config": {"lr": 1}}
    with pytest.raises(run_record.UsageError, match="no run"):
        run_record.check(root, now, resume=True)
    run_record.check(root, now, resume=False)
    run_record.check(root, now, resume=True)
    with pytest.raises(run_record.UsageError, match=r"lr: 1 when the run started, 2 now"):
        run_record.check(root, {**now, "config": {"lr": 2}}, resume=True)


def test_a_finished_search_resumed_on_other_shards_is_refused(
    gesture_shards, other_shards, ray_session, tmp_path, capfd, monkeypatch
):
    """The finding end to end: a finished smoke search, then ``--resume`` on other shards."""
    import torch

    threads = torch.get_num_threads()
    try:
        assert tune.main(_argv(gesture_shards, tmp_path)) == 0
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "x" / run_record.LOCK_FILE).exists()
    capfd.readouterr()
    assert tune.main(_argv(gesture_shards, tmp_path, "--resume")) == 0  # same inputs: done
    out = capfd.readouterr().out
    assert "retrained before" in out and "retraining" not in out, out
    report = (tmp_path / "x" / "results" / "report.md").read_text()
    from distributed.core import runtime

    monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    assert tune.main(_argv(other_shards, tmp_path, "--resume")) == 2
    one_line_error(capfd.readouterr().err, "shards:", other_shards)
    assert (tmp_path / "x" / "results" / "report.md").read_text() == report


@pytest.mark.timeout(400)
def test_a_killed_trial_process_is_restarted_from_its_checkpoint(
    gesture_shards, tmp_path, ray_session, capfd
):
    """Finding 11: the process of a one-worker trial (in-process) is SIGKILLed mid-fit, after
    its first checkpoint: Tune restarts it from that checkpoint and the search finishes with the
    trial complete, not failed, and not trained again from its first epoch."""
    import signal
    import threading

    import ray

    killed: list[int] = []

    def trial_pids() -> list[int]:
        """Live function-trial actors, from the GCS's actor table (the state API's HTTP
        server times out on a loaded machine)."""
        return [
            a["Pid"]
            for a in ray._private.state.actors().values()
            if a.get("ActorClassName") == "ImplicitFunc" and a.get("State") == "ALIVE"
        ]

    def kill_the_trial_after_its_first_checkpoint() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if list((tmp_path / "x").glob("outer0/*/checkpoint_*")):
                try:
                    pids = trial_pids()
                except Exception:  # noqa: BLE001 -- a busy GCS: ask again
                    pids = []
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_the_trial_after_its_first_checkpoint, daemon=True)
    watcher.start()
    argv = _argv(gesture_shards, tmp_path)
    argv[argv.index("--epochs") + 1] = "6"
    capfd.readouterr()
    code = tune.main(argv)
    watcher.join(timeout=5)
    out = capfd.readouterr().out
    assert code == 0 and len(killed) == 1, (code, killed, out[-3000:])
    assert "trial 1/1 lost its process" in out and "from its last checkpoint (retry 1 of 2)" in out
    (trial,) = json.loads((tmp_path / "x" / "ledger-outer0.json").read_text())["trials"]
    assert trial["end"]["state"] == "complete" and trial["restarts"] == 1, trial
    steps = [(r["fold_index"], r["epoch"]) for r in trial["results"] if "epoch" in r]
    assert steps.count((0, 0)) == 1, steps  # resumed from the checkpoint, not from scratch
    assert steps[-1] == (1, 5), steps  # and trained to the end of the last inner fold
    assert (tmp_path / "x" / "results" / "report.md").exists()
