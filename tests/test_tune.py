"""The main job: nested-CV search with Ray Tune + Optuna (smoke scale, synthetic gestures)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from branches.base import ForbiddenRowError
from branches.gesture import GestureCollate
from tests.conftest import stored_protocol

ROOT = Path(__file__).resolve().parents[1]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _check_results(root: Path, shards_root: str, samples: int) -> None:
    """What a finished search must leave: trials, ASHA stops, reports equal to the CSVs."""
    results = root / "results"
    trials = _rows(results / "trials.csv")
    assert len(trials) == samples
    assert not any(t["error"] for t in trials), [t["error"] for t in trials]
    # The trials really differ, and ASHA stopped at least one before its last inner fold.
    assert len({(t["representation"], t["width"], t["lr"]) for t in trials}) >= 2
    assert any(t["complete"] == "False" for t in trials), trials
    assert any(t["complete"] == "True" for t in trials)
    # The report's numbers are the CSVs' numbers.
    folds = _rows(results / "folds.csv")
    report = (results / "report.md").read_text()
    war = np.mean([float(f["war"]) for f in folds])
    uar = np.mean([float(f["uar"]) for f in folds])
    assert f"WAR {war:.3f} ± 0.000, UAR {uar:.3f} ± 0.000" in report
    best = max((t for t in trials if t["complete"] == "True"), key=lambda t: float(t["cv_metric"]))
    assert folds[0]["trial_id"] == best["trial_id"]
    assert f"{float(folds[0]['inner_cv']):.3f}" in report
    cfg = json.loads((results / "best_config.json").read_text())
    assert cfg["per_outer_fold"][0]["params"]["width"] == int(best["width"])
    for png in ("optimisation_history.png", "confusion.png"):
        assert (results / png).stat().st_size > 1000
    # Importances need >= 3 complete trials with different scores; without them, a sentence.
    if (results / "param_importances.png").exists():
        assert (results / "param_importances.png").stat().st_size > 1000
    else:
        assert "Parameter importances: not computed" in report
    # The outer test fold was scored once, by the final model, on exactly its rows.
    FOLDS = stored_protocol(shards_root)
    final = json.loads((root / "outer0" / "final.json").read_text())
    assert sorted(final["ids"]) == sorted(FOLDS["outer"][0]["test"])
    assert int(folds[0]["n_test"]) == len(FOLDS["outer"][0]["test"])


def test_training_code_refuses_outer_test_rows():
    """The guard every trial runs with: a batch holding an outer-test row raises."""
    collate = GestureCollate(forbidden=frozenset({"bow/s00_0001"}))
    j = np.zeros((4, 25, 2), np.float32).tobytes()
    c = np.ones((4, 25), np.float32).tobytes()
    batch = {
        "id": np.array(["bow/s00_0001"]),
        "joints": np.array([j], object),
        "confidence": np.array([c], object),
        "n_frames": np.array([4]),
        "n_joints": np.array([25]),
        "dims": np.array([2]),
        "label": np.array([0]),
    }
    with pytest.raises(ForbiddenRowError):
        collate(batch)
    batch["id"] = np.array(["bow/s01_0001"])
    assert collate(batch)["joints"].shape == (1, 4, 25, 2)


def _kill_driver(proc) -> None:
    """SIGKILL the driver's process group. Its job's actors, tasks and placement groups are
    reclaimed by the cluster when the driver dies; the cluster itself stays up."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


@pytest.mark.timeout(900)
def test_search_killed_then_resumed_finishes_with_honest_reports(
    gesture_shards, tmp_path, ray_session
):
    """The driver joins the session's Ray cluster (as with `ray job submit` on a cluster): one Ray
    instance on the machine, so Train's placement-group cleaner can find it."""
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [
        sys.executable,
        "-m",
        "distributed.tune",
        "gesture",
        "--smoke",
        "--shards",
        gesture_shards,
        "--storage",
        str(tmp_path),
        "--name",
        "r",
        "--folds",
        "1",
        "--samples",
        "4",
        "--max-concurrent",
        "1",
        "--quiet",
    ]
    exp = tmp_path / "r" / "outer0"
    # One learning rate in the space cannot learn anything: ASHA must cut such trials after
    # their first inner fold, whether they run before or after the interruption.
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"space": {"lr": {"choice": [0.01, 1e-7]}}}))
    cmd += ["--space", str(space)]

    def finished_trials():
        done = {}
        for result in exp.glob("*/result.json"):
            lines = result.read_text().splitlines()
            if lines and json.loads(lines[-1]).get("done"):
                done[result.parent.name] = len(lines)
        return done

    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and len(finished_trials()) < 1 and proc.poll() is None:
            time.sleep(2)
        time.sleep(3)  # let Tune save the experiment state after the trial ended
        before = finished_trials()
        assert before, (tmp_path / "first.log").read_text()[-3000:]
        assert proc.poll() is None, "the search ended before it could be interrupted"
    finally:
        _kill_driver(proc)

    second = subprocess.run(
        cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=800
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = finished_trials()
    assert len(after) == 4  # the Optuna/Tune state survived: no extra trials, none lost
    for name, n_results in before.items():
        assert after[name] == n_results, f"finished trial {name} was run again"
    _check_results(tmp_path / "r", gesture_shards, samples=4)
    trials = _rows(tmp_path / "r" / "results" / "trials.csv")
    # The Optuna study itself (journal file) holds the 4 trials with the values Tune reported.
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = JournalStorage(JournalFileBackend(str(tmp_path / "r" / "optuna-outer0.journal")))
    study = optuna.load_study(study_name="outer0", storage=journal)
    values = sorted(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len(study.trials) == 4
    assert np.allclose(values, sorted(float(t["cv_metric"]) for t in trials))
    assert re.search(
        r"WAR \d\.\d{3} ± \d\.\d{3}", (tmp_path / "r" / "results" / "report.md").read_text()
    )


def test_concurrency_plan_keeps_a_cpu_for_data_and_waits_for_autoscaling():
    from distributed.cli import UsageError
    from distributed.search import plan_concurrency

    assert plan_concurrency(2, 1, 0.5, None) == 1  # 2-CPU laptop: one trial, 0.5-CPU worker
    assert plan_concurrency(8, 2, 1.0, None) == 3
    assert plan_concurrency(8, 2, 1.0, 2) == 2
    with pytest.raises(UsageError, match="plus 1 for data loading"):
        plan_concurrency(1, 1, 0.5, None)
    assert plan_concurrency(0, 1, 1.0, 4, autoscaling=True) == 4  # GPU nodes not up yet


@pytest.mark.parametrize("kind", ["facial", "gesture"])
@pytest.mark.parametrize("smoke", [False, True])
def test_every_point_of_the_built_in_spaces_is_a_valid_config(kind, smoke):
    """Start points and every choice value build a TrainConfig (a typo fails here, not in a
    trial hours into a search); the smoke face space searches the predicting head."""
    from branches import get_branch
    from distributed.config import default_config, flat_keys
    from distributed.search_space import load_space

    space = load_space(kind, smoke=smoke)
    base = default_config(kind, **(get_branch(kind).smoke if smoke else {}))
    assert space.start and all(set(p) == set(space.space) for p in space.start)
    for point in space.start:
        base.override(**point)
    for name, spec in space.space.items():
        assert name in flat_keys(kind)
        for value in spec.get("choice", []):
            assert base.override(**{name: value}).flat()[name] == value
    if kind == "facial" and smoke:
        assert set(space.space["head"]["choice"]) == {"fused", "p3"}
        assert {p["head"] for p in space.start} == {"fused", "p3"}
