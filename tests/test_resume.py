"""Exact resume of ``distributed.tune``: a driver SIGKILLed at each point, then ``--resume``,
ends with the same trials, values, scheduler state, Optuna study and report as a run that was
never interrupted (same seed, computed once for the module).

The kills are real: ``tests/resume_driver.py`` runs the real driver in a subprocess and kills
its own process with SIGKILL from a wrapper of the ledger writes (or of the final retrain).
Smallest search: gesture smoke, 1 outer fold, 3 trials, one at a time; trial 1 is a start point
with a learning rate that cannot learn, so ASHA stops it after its first inner fold (the
finished-then-stopped trial of the issue), and trial 2 is TPE's own proposal.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_tune import _check_results

ROOT = Path(__file__).resolve().parents[1]
DRIVER = str(ROOT / "tests" / "resume_driver.py")
GOOD = {"representation": "timeline", "width": 16, "lr": 0.01}
BAD = {"representation": "timeline", "width": 16, "lr": 1e-7}
SPACE = {
    "space": {"lr": {"choice": [0.01, 0.003, 1e-7]}},
    "start": [GOOD, BAD],
}


@pytest.fixture(scope="module")
def search_env(gesture_shards, ray_session, tmp_path_factory):
    """(command line without --storage/--name, environment): drivers join the session's Ray."""
    base = tmp_path_factory.mktemp("resume")
    space = base / "space.json"
    space.write_text(json.dumps(SPACE))
    args = ["gesture", "--smoke", "--shards", gesture_shards, "--folds", "1", "--samples", "3"]
    args += ["--epochs", "2", "--max-concurrent", "1", "--quiet", "--space", str(space)]
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "PYTHONPATH": str(ROOT),
    }
    return base, args, env


def _drive(search_env, name: str, point: str, resume: bool = False, timeout: int = 600):
    """Run the driver to ``point``; returns (exit code, log). Whatever the driver left in its
    process group (Ray's per-driver helpers) is killed with it."""
    base, args, env = search_env
    cmd = [sys.executable, DRIVER, point, *args, "--storage", str(base), "--name", name]
    cmd += ["--resume"] if resume else []
    log_path = base / f"{name}-{point.replace(':', '_')}-{int(resume)}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)
    return code, log_path.read_text()


def _ledger(root: Path) -> dict:
    return json.loads((root / "ledger-outer0.json").read_text())


def _same_trials(ledger: dict) -> list:
    """What must not depend on interruptions: configs, every result, every end, in order."""
    drop = ("seq",)
    return [
        (
            t["number"],
            t["config"],
            [{k: v for k, v in r.items() if k not in drop} for r in t["results"]],
            {k: v for k, v in (t["end"] or {}).items() if k not in drop},
        )
        for t in ledger["trials"]
    ]


def _tune_status(exp: Path, trial_id: str) -> str | None:
    """A trial's status in Tune's latest saved experiment state (None: not saved yet)."""
    states = sorted(exp.glob("experiment_state-*.json"))
    if not states:
        return None
    for trial_json, _ in json.loads(states[-1].read_text())["trial_data"]:
        trial = json.loads(trial_json)
        if trial["trial_id"] == trial_id:
            return trial.get("status")
    return None


def _study(root: Path) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = JournalStorage(JournalFileBackend(str(root / "optuna-outer0.journal")))
    study = optuna.load_study(study_name="outer0", storage=journal)
    return [
        (t.number, t.state.name, t.value, t.params, dict(t.intermediate_values))
        for t in study.trials
    ]


def _results(root: Path) -> dict:
    out = root / "results"
    report = re.sub(r", [\d.]+ min\n", "\n", (out / "report.md").read_text())
    final = json.loads((root / "outer0" / "final.json").read_text())
    final["model"] = Path(final["model"]).relative_to(root).as_posix()
    with open(out / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    return {
        "trials.csv": trials,
        "folds.csv": (out / "folds.csv").read_text(),
        "best_config.json": (out / "best_config.json").read_text(),
        "report.md": report,
        "final": final,
    }


@pytest.fixture(scope="module")
def uninterrupted(search_env, gesture_shards):
    code, log = _drive(search_env, "whole", "none")
    assert code == 0, log[-3000:]
    root = search_env[0] / "whole"
    _check_results(root, gesture_shards, samples=3)
    ledger = _ledger(root)
    ends = [t["end"]["state"] for t in ledger["trials"]]
    # the case of the finding 1: trial 1 finishes stopped by ASHA at rung 1
    assert ends[:2] == ["complete", "stopped"] and ledger["trials"][1]["end"]["rung"] == 1
    assert [t["config"]["lr"] for t in ledger["trials"][:2]] == [GOOD["lr"], BAD["lr"]]
    return root


@pytest.mark.timeout(1800)
def test_killed_at_every_point_then_resumed_gives_the_uninterrupted_result(
    search_env, uninterrupted
):
    name = "killed"
    root = search_env[0] / name

    # 1. before trial 1 starts: trial 0 is finished, trial 1 never recorded
    code, log = _drive(search_env, name, "trial-start:1")
    assert code == -signal.SIGKILL, log[-3000:]
    assert [t["end"]["state"] for t in _ledger(root)["trials"]] == ["complete"]

    # 2. mid-trial: trial 1 has reported one epoch and is training the next
    code, log = _drive(search_env, name, "result:1:1", resume=True)
    assert code == -signal.SIGKILL, log[-3000:]
    trials = _ledger(root)["trials"]
    assert len(trials) == 2 and trials[1]["end"] is None and len(trials[1]["results"]) == 1
    assert trials[1]["config"]["lr"] == BAD["lr"]

    # 3. between trial 1's last report (ASHA stopped it) and Tune's state save: trial 1 was
    #    re-run from scratch; now the ledger says it ended, Tune's saved state cannot know yet
    code, log = _drive(search_env, name, "trial-end:1", resume=True)
    assert code == -signal.SIGKILL, log[-3000:]
    ledger = _ledger(root)
    assert [t["end"]["state"] for t in ledger["trials"]] == ["complete", "stopped"]
    assert ledger["attempt"] == 2
    assert _tune_status(root / "outer0-resume2", ledger["trials"][1]["tune_trial_id"]) != (
        "TERMINATED"
    )

    # 4. during the final retrain (trial 2 ran first; trials 0 and 1 were not run again)
    code, log = _drive(search_env, name, "final", resume=True)
    assert code == -signal.SIGKILL, log[-3000:]
    assert "2 trial(s) finished, 1 to run" in log
    assert len(_ledger(root)["trials"]) == 3
    assert not (root / "outer0" / "final.json").exists()

    # 5. the last resume only retrains and writes the results
    code, log = _drive(search_env, name, "none", resume=True)
    assert code == 0, log[-3000:]
    assert "3 trial(s) finished, 0 to run" in log

    whole, killed = _ledger(uninterrupted), _ledger(root)
    assert _same_trials(killed) == _same_trials(whole)
    assert killed["scheduler"]["rungs"] == whole["scheduler"]["rungs"]
    # the Optuna journal agrees with the ledger: no duplicate, running or re-told trial
    study = _study(root)
    assert study == _study(uninterrupted)
    assert [s[1] for s in study] == ["COMPLETE"] * 3
    assert [s[2] for s in study] == [t["results"][-1]["cv_metric"] for t in killed["trials"]]
    assert _results(root) == _results(uninterrupted)
    # every trial's Train runs: trial 1 twice (killed mid-way, then whole), the others once
    assert len(list((root / "train").glob("outer0-final*"))) == 2


def _ask_tell(study, distributions, n):
    """n trials of a deterministic objective; returns their params."""
    out = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=distributions)
        value = -((trial.params["lr"] - 0.004) ** 2) + 0.01 * trial.params["width"]
        study.tell(trial, value)
        out.append(trial.params)
    return out


@pytest.mark.timeout(120)
def test_a_rebuilt_study_proposes_what_the_uninterrupted_one_would():
    """TPE (past its 10 random start-up trials) after a study is rebuilt from ledger entries
    proposes the same points as the study that was never interrupted; with one seed for the
    whole study (plain TPESampler) it would not."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from distributed.search.ledger import Ledger, TrialSeededSampler, rebuild_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "width": CategoricalDistribution([8, 16]),
    }
    whole = optuna.create_study(direction="maximize", sampler=TrialSeededSampler(3))
    expected = _ask_tell(whole, dists, 14)

    def resumed(sampler):
        ledger = Ledger("unused.json", 0, {})
        for t in whole.trials[:11]:
            ledger.trials.append(
                {
                    "number": t.number,
                    "config": dict(t.params),
                    "results": [{"training_iteration": 1, "cv_metric": t.value}],
                    "end": {"state": "complete", "rung": 1, "error": ""},
                }
            )
        storage = optuna.storages.InMemoryStorage()
        rebuild_study(storage, "s", ledger, dists)
        study = optuna.load_study(study_name="s", storage=storage, sampler=sampler)
        assert [t.value for t in study.trials] == [t.value for t in whole.trials[:11]]
        return _ask_tell(study, dists, 3)

    assert resumed(TrialSeededSampler(3)) == expected[11:]
    assert resumed(optuna.samplers.TPESampler(seed=3)) != expected[11:]
