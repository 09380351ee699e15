"""One training loop, three hosts: in this process, in a Tune function trial, on a worker group."""

import os

import numpy as np
import pytest
import torch

from datasets.manifest import read_manifest, read_protocol
from distributed.core.config import default_config
from distributed.training.checkpoint import load_model
from distributed.training.launch import (
    Resources,
    export_model,
    fit_folds,
    outer_fold_spec,
    prepare_datasets,
)
from distributed.training.local_hosts import COMPLETE
from tests import faults

pytestmark = pytest.mark.timeout(400)

SMALL = dict(rep_size=32, rep_length=48, width=16, se_reduction=4, batch_size=8, lr=1e-2)
COLS = ["fold_index", "epoch", "train_loss", "train_uar", "val_loss", "val_uar", "best",
        "folds_done", "cv_metric"]  # fmt: skip


def _tune_trial_history(cfg, data, storage_path) -> np.ndarray:
    """The same fit inside a Ray Tune function trial (the loop in the trial's process, reporting
    with Tune's own API); its history as Tune recorded it."""
    from ray import tune

    def trainable(config, data):
        fit_folds(cfg, data, resources=Resources(0, cpus_per_worker=0.5),
                  storage_path=storage_path, name="unused", tune_report=True)  # fmt: skip

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), {"CPU": 0.5}),
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name="trial", storage_path=storage_path, verbose=0),
    )
    results = tuner.fit()
    assert results.errors == []
    df = results[0].metrics_dataframe
    assert list(df["epoch"]) == [0, 1, 2, 0, 1, 2]
    assert "checkpoint_dir_name" in df  # its checkpoints went to Tune
    return df[COLS].to_numpy()


@pytest.fixture(scope="module")
def folds(gesture_shards, ray_session):
    manifest = read_manifest(gesture_shards)
    key, protocol = read_protocol(gesture_shards, manifest)
    specs = [outer_fold_spec(protocol, key, 0, j) for j in range(2)]
    return prepare_datasets(gesture_shards, specs, frozenset(protocol.fold(0).test))


def test_three_hosts_give_one_history_and_a_local_run_keeps_checkpoints_and_resumes(
    folds, tmp_path
):
    """Two inner folds in one call of the loop: in this process, in a Tune trial and on a Ray
    Train worker group the history is the same, exactly; the in-process run writes its
    checkpoints to storage (the newest two, each whole), exports a self-describing model, and a
    run that crashed mid-fold resumes from its last checkpoint to the same history."""
    cfg = default_config("gesture", epochs=3, **SMALL)
    threads = torch.get_num_threads()
    try:
        group = fit_folds(cfg, folds, resources=Resources(1, cpus_per_worker=0.5),
                          storage_path=str(tmp_path), name="group")  # fmt: skip
        local = fit_folds(cfg, folds, resources=Resources(0, cpus_per_worker=0.5),
                          storage_path=str(tmp_path), name="local")  # fmt: skip
        in_tune = _tune_trial_history(cfg, folds, str(tmp_path))
        with pytest.raises(RuntimeError, match="injected crash"):
            fit_folds(cfg, folds, resources=Resources(0, cpus_per_worker=0.5),
                      storage_path=str(tmp_path), name="crash",
                      loop=faults.raising_at(4))  # fmt: skip
        resumed = fit_folds(cfg, folds, resources=Resources(0, cpus_per_worker=0.5),
                            storage_path=str(tmp_path), name="crash")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert list(local.history["epoch"]) == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(local.history[COLS].to_numpy(), group.history[COLS].to_numpy())
    np.testing.assert_array_equal(in_tune, local.history[COLS].to_numpy())
    # Checkpoints: the newest two, each whole, on the run's storage (not a temporary folder).
    stored = sorted((tmp_path / "local").glob("checkpoint_*"))
    assert len(stored) == 2
    assert all((p / COMPLETE).exists() and (p / "state.pt").exists() for p in stored)
    assert str(stored[-1]) == local.checkpoint
    mf = load_model(export_model(local, str(tmp_path / "m.pt")))
    assert mf.trained_on.outer == 0 and mf.trained_on.inner == 1
    # The crash came in fold 1's second epoch; fold 1's first epoch always improves on nothing,
    # so it was saved: the re-run continues mid-fold (model, optimiser, best so far) to the
    # uninterrupted history.
    assert list(resumed.history["epoch"]) == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(resumed.history[COLS].to_numpy(), local.history[COLS].to_numpy())


def _scale_tracking(config, host, *, seen: list, crash_at: int | None):
    """The real loop; records the gradient scaler's scale at the start of each training epoch,
    sets a distinctive scale after epoch 0 (as overflowing steps would), optionally crashes."""
    from distributed.training import loop

    real = loop.run_epoch

    def run_epoch(*args, **kwargs):
        if kwargs.get("train"):
            seen.append((kwargs["epoch"], kwargs["scaler"].get_scale()))
            if kwargs["epoch"] == crash_at:
                raise RuntimeError("injected crash")
        out = real(*args, **kwargs)
        if kwargs.get("train") and kwargs["epoch"] == 0:
            kwargs["scaler"].update(new_scale=1234.0)
        return out

    loop.run_epoch = run_epoch
    try:
        loop.train_folds(config, host)
    finally:
        loop.run_epoch = real


def test_a_resumed_fp16_run_restores_the_gradient_scaler(folds, tmp_path):
    """fp16 trains with a gradient scaler; its state is in the checkpoint, so a run resumed
    after a crash continues with the scale it had (not a fresh 65536)."""
    import functools

    cfg = default_config("gesture", epochs=3, precision="fp16", **SMALL)
    first, second = [], []
    run = dict(resources=Resources(0, cpus_per_worker=0.5), storage_path=str(tmp_path), name="amp")
    threads = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="injected crash"):
            fit_folds(cfg, folds, **run,
                      loop=functools.partial(_scale_tracking, seen=first, crash_at=1))  # fmt: skip
        fit_folds(cfg, folds, **run,
                  loop=functools.partial(_scale_tracking, seen=second, crash_at=None))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert first == [(0, 65536.0), (1, 1234.0)]
    assert second[0] == (1, 1234.0)  # resumed at fold 0's epoch 1 with the saved scale


def test_train_cli_local_runs_in_this_process(gesture_shards, tmp_path, ray_session, capsys):
    """`distributed.train --local` (and `--workers 0`): the loop runs in the calling process,
    one line per epoch, a model file; `--local --gpu` on a machine without CUDA is refused in
    one line before any work."""
    from distributed import train
    from distributed.training import loop

    seen = []
    real = loop.run_epoch

    def run_epoch(*args, **kwargs):  # runs here, in this process, if and only if local
        seen.append(os.getpid())
        return real(*args, **kwargs)

    argv = ["gesture", "--shards", gesture_shards, "--fold", "0", "--inner", "1", "--smoke",
            "--epochs", "2", "--out", str(tmp_path)]  # fmt: skip
    threads = torch.get_num_threads()
    loop.run_epoch = run_epoch
    try:
        assert train.main(argv + ["--local"]) == 0
    finally:
        loop.run_epoch = real
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert seen and set(seen) == {os.getpid()}
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["0", "1"]
    run = tmp_path / "gesture-fold0-inner1"
    assert f"model: {run / 'model.pt'}" in out
    assert load_model(str(run / "model.pt")).trained_on.inner == 1
    assert (run / "checkpoint_000000").is_dir()
    if not torch.cuda.is_available():
        assert train.main(argv + ["--workers", "0", "--gpu"]) == 2
        err = capsys.readouterr().err
        assert err == "error: --gpu with --local: this machine has no CUDA device\n"
