"""The main job: nested-CV search with Ray Tune + Optuna (smoke scale, synthetic gestures)."""

import csv
import json
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
    assert folds[0]["trial"] == best["trial"]
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


def test_concurrency_plan_keeps_a_cpu_for_data_and_waits_for_autoscaling():
    from distributed.core.commands import UsageError
    from distributed.search.driver import plan_concurrency

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
    from distributed.core.config import default_config, flat_keys
    from distributed.search.space import load_space

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
