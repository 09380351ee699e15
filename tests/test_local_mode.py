"""Ray Train's local mode (workers=0): the same loop in the calling process, no worker group."""

import numpy as np
import pytest
import torch

from datasets.manifest import read_manifest, read_protocol
from distributed.checkpoint import load_model
from distributed.config import default_config
from distributed.local_mode import COMPLETE
from distributed.trainer import (
    Resources,
    export_model,
    fit_folds,
    outer_fold_spec,
    prepare_datasets,
)
from tests import faults

pytestmark = pytest.mark.timeout(400)

SMALL = dict(rep_size=32, rep_length=48, width=16, se_reduction=4, batch_size=8, lr=1e-2)
COLS = ["fold_index", "epoch", "train_loss", "train_uar", "val_loss", "val_uar", "best",
        "folds_done", "cv_metric"]  # fmt: skip


def test_local_fit_equals_the_worker_group_fit_keeps_checkpoints_and_resumes(
    gesture_shards, tmp_path, ray_session
):
    """Two inner folds in one fit: local mode gives the worker group's history exactly, writes
    its checkpoints to storage (the last two), exports a self-describing model, and a run that
    crashed mid-fold resumes from its last checkpoint to the same history."""
    manifest = read_manifest(gesture_shards)
    key, protocol = read_protocol(gesture_shards, manifest)
    specs = [outer_fold_spec(protocol, key, 0, j) for j in range(2)]
    data = prepare_datasets(gesture_shards, specs, frozenset(protocol.fold(0).test))
    cfg = default_config("gesture", epochs=3, **SMALL)
    threads = torch.get_num_threads()
    try:
        group = fit_folds(cfg, data, resources=Resources(1, cpus_per_worker=0.5),
                          storage_path=str(tmp_path), name="group")  # fmt: skip
        local = fit_folds(cfg, data, resources=Resources(0, cpus_per_worker=0.5),
                          storage_path=str(tmp_path), name="local")  # fmt: skip
        with pytest.raises(RuntimeError, match="injected crash"):
            fit_folds(cfg, data, resources=Resources(0, cpus_per_worker=0.5),
                      storage_path=str(tmp_path), name="crash",
                      loop=faults.raising_at(4))  # fmt: skip
        kept = sorted(p.name for p in (tmp_path / "crash").glob("checkpoint_*"))
        resumed = fit_folds(cfg, data, resources=Resources(0, cpus_per_worker=0.5),
                            storage_path=str(tmp_path), name="crash")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert list(local.history["epoch"]) == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(local.history[COLS].to_numpy(), group.history[COLS].to_numpy())
    # Checkpoints: the last two, each whole, on the run's storage (not in a temporary folder).
    stored = sorted((tmp_path / "local").glob("checkpoint_*"))
    assert [p.name for p in stored] == ["checkpoint_000004", "checkpoint_000005"]
    assert all((p / COMPLETE).exists() and (p / "state.pt").exists() for p in stored)
    assert str(stored[-1]) == local.result.checkpoint.path
    mf = load_model(export_model(local, str(tmp_path / "m.pt")))
    assert mf.trained_on.outer == 0 and mf.trained_on.inner == 1
    # The crash came in fold 1's second epoch: fold 0 and fold 1's epoch 0 were saved; the
    # re-run continues mid-fold (model, optimiser, best so far) to the uninterrupted history.
    assert kept == ["checkpoint_000002", "checkpoint_000003"]
    assert list(resumed.history["epoch"]) == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(resumed.history[COLS].to_numpy(), local.history[COLS].to_numpy())


def test_train_cli_local_runs_in_this_process_and_refuses_local_with_gpu(
    gesture_shards, tmp_path, ray_session, capsys
):
    """`distributed.train --local` (and `--workers 0`): the loop runs in the calling process
    (the fit's context is Ray's local one: world size 1, no worker group), one line per epoch,
    a model file; with --gpu it is refused in one line before any work."""
    import os

    import ray.train

    from distributed import train, worker

    seen = []
    real = worker.run_epoch

    def run_epoch(*args, **kwargs):  # runs here, in this process, if and only if local mode
        seen.append((os.getpid(), ray.train.get_context().get_world_size()))
        return real(*args, **kwargs)

    argv = ["gesture", "--shards", gesture_shards, "--fold", "0", "--inner", "1", "--smoke",
            "--epochs", "2", "--out", str(tmp_path)]  # fmt: skip
    threads = torch.get_num_threads()
    worker.run_epoch = run_epoch
    try:
        assert train.main(argv + ["--local"]) == 0
    finally:
        worker.run_epoch = real
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert seen and set(seen) == {(os.getpid(), 1)}
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["0", "1"]
    run = tmp_path / "gesture-fold0-inner1"
    assert f"model: {run / 'model.pt'}" in out
    assert load_model(str(run / "model.pt")).trained_on.inner == 1
    assert sorted(p.name for p in run.glob("checkpoint_*")) == [
        "checkpoint_000000",
        "checkpoint_000001",
    ]
    assert train.main(argv + ["--workers", "0", "--gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --local (or --workers 0) runs on the CPU")
    assert err.count("\n") == 1
