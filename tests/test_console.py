"""What `python -m distributed.tune` shows a person, and where the rest goes: one real smoke
search (local-mode trials, MLflow on a file: URI, TensorBoard event files), checked from outside."""

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_search(gesture_shards, tmp_path_factory, ray_session):
    """One gesture search (1 outer fold, 2 trials) in a subprocess joining the session's Ray."""
    tmp = tmp_path_factory.mktemp("console")
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "PYTHONPATH": str(ROOT),
    }
    mlruns = tmp / "mlruns"
    cmd = [sys.executable, "-m", "distributed.tune", "gesture", "--smoke",
           "--shards", gesture_shards, "--storage", str(tmp), "--name", "c", "--folds", "1",
           "--samples", "2", "--max-concurrent", "1", "--mlflow", mlruns.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    return proc, tmp / "c", mlruns


@pytest.mark.timeout(900)
def test_console_shows_header_events_result_and_report_path_and_logs_the_rest(smoke_search):
    proc, root, _ = smoke_search
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) <= 100, len(lines)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr[-2000:]
    # Header: the log file first, then what runs on what data and where results go.
    log = Path(re.match(r"log: (\S+) ", lines[0]).group(1))
    assert log.parent == root / "logs" and log.exists()
    assert any(ln.startswith("nested CV: gesture, model accm, shards ") for ln in lines)
    assert any(ln.startswith("protocol: subjects (3 outer folds; running 1: [0]") for ln in lines)
    assert any(
        "2 trials per outer fold" in ln and "in each trial's own process (CPU)" in ln
        for ln in lines
    )
    assert "batch: 8 per step in all" in lines
    assert f"results: {root / 'results'} (trials: {root / 'outer*'})" in lines
    # One line per event, with counts and a clock.
    assert "outer fold 1/1 (fold 0): searching 2 configurations" in proc.stdout
    for k in (1, 2):
        assert any(ln.startswith(f"outer 1/1 trial {k}/2 started: ") for ln in lines)
    folds = [ln for ln in lines if re.search(r"trial \d/2 inner fold \d/2: val UAR", ln)]
    assert folds and all("elapsed" in ln for ln in folds)
    ends = [ln for ln in lines if re.search(r"trial \d/2 (finished|stopped early)", ln)]
    assert len(ends) == 2
    assert any(re.match(r"outer fold 1/1 finished: test WAR \d\.\d{3} UAR \d\.\d{3}", ln)
               for ln in lines)  # fmt: skip
    # The result and the report's path end the output; the result is the report's.
    report = root / "results" / "report.md"
    assert lines[-1] == f"report: {report}"
    result = lines[-2].removeprefix("result: ")
    assert result.startswith("WAR ") and result in report.read_text().replace("**", "")
    # Ray's, Tune's and the workers' chatter is in the log file, not on the console.
    text = log.read_text()
    for chatter in ("Configuration for experiment", "Number of trials", "Search algorithm"):
        assert chatter in text and chatter not in proc.stdout, chatter
    assert "outer fold 1/1 finished" in text  # our lines are in the log too, in order


def _events(path: Path):
    """The Event records of a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto.event_pb2 import Event

    data, pos = path.read_bytes(), 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        event = Event()
        event.ParseFromString(data[pos + 12 : pos + 12 + n])
        pos += 12 + n + 4
        yield event


@pytest.mark.timeout(900)
def test_local_trials_report_every_epoch_to_tune_tensorboard_and_mlflow(smoke_search, monkeypatch):
    proc, root, mlruns = smoke_search
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted((root / "outer0").glob("trial_driver_*"))
    assert len(trials) == 2
    for trial in trials:
        results = [json.loads(x) for x in (trial / "result.json").read_text().splitlines()]
        # every epoch of every inner fold the trial ran reached Tune, in order
        n_folds = results[-1]["fold_index"] + 1
        assert [(r["fold_index"], r["epoch"]) for r in results] == [
            (f, e)
            for f in range(n_folds)
            for e in range(3)  # smoke: 3 epochs per fold
        ]
        # checkpoints went to Tune with the reports that carried them (every fold's last epoch
        # at least); Tune keeps the newest two in the trial's folder
        saved = [r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")]
        assert all(r["checkpoint_dir_name"] for r in results if r["epoch"] == 2)
        kept = sorted(p.name for p in trial.glob("checkpoint_*"))
        assert kept == sorted(saved)[-2:] and (trial / kept[-1] / "state.pt").exists()
        # TensorBoard: Tune's event file holds the worker's per-epoch validation metric
        (events,) = trial.glob("events.out.tfevents.*")
        uar = [v.simple_value for e in _events(events) for v in e.summary.value
               if v.tag.endswith("/val_uar")]  # fmt: skip
        assert uar == pytest.approx([r["val_uar"] for r in results])
    # MLflow (file: URI): one run per trial with the metrics of its last epoch
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as tune sets it for a file: URI

    client = MlflowClient(tracking_uri=mlruns.as_uri())
    (exp,) = [e for e in client.search_experiments() if e.name == "c-outer0"]
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert {"val_uar", "cv_metric", "train_loss"} <= set(run.data.metrics)
        assert {"lr", "width", "representation"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_uar")
        assert len(history) >= 3  # one value per reported epoch (smoke: 3 epochs per fold)
