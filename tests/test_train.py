"""Ray Train (V2) training: DDP sync, learning, model selection, checkpoints, fault tolerance."""

import numpy as np
import pandas as pd
import pytest
import torch

from datasets import shards
from datasets.manifest import read_manifest, read_protocol
from distributed.core.config import default_config
from distributed.training.checkpoint import TrainedOn, load_model
from distributed.training.launch import (
    FoldSpec,
    Resources,
    export_model,
    fit_folds,
    prepare_datasets,
)
from tests import faults

pytestmark = pytest.mark.timeout(400)


def _subject_split(root, val_subjects):
    table = shards.read_table(root, columns=["id", "subject"])
    ids, subj = table["id"].to_pylist(), table["subject"].to_pylist()
    train = tuple(i for i, s in zip(ids, subj) if s not in val_subjects)
    val = tuple(i for i, s in zip(ids, subj) if s in val_subjects)
    return train, val, sorted(set(subj))


GESTURE_SMALL = dict(rep_size=32, rep_length=48, width=16, se_reduction=4, batch_size=8, lr=1e-2)


def test_ddp_two_workers_sync_learn_and_write_a_self_describing_model(
    gesture_shards, tmp_path, ray_session
):
    manifest = read_manifest(gesture_shards)
    outer = read_protocol(gesture_shards, manifest)[1].fold(0)
    split = outer.inner[0]
    spec = FoldSpec(split.train, split.val, TrainedOn(0, 0, "subjects"))
    cfg = default_config("gesture", epochs=12, **GESTURE_SMALL)
    dump = tmp_path / "params"
    dump.mkdir()
    result = fit_folds(
        cfg,
        prepare_datasets(gesture_shards, [spec], frozenset(outer.test)),
        resources=Resources(workers=2, cpus_per_worker=0.5),
        storage_path=str(tmp_path),
        name="ddp",
        loop=faults.dumping_params(str(dump)),
    )
    # DDP really synchronises: both ranks end with bit-identical parameters.
    a = torch.load(dump / "fold0-rank0.pt", weights_only=True)
    b = torch.load(dump / "fold0-rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    df = result.history
    assert list(df["epoch"]) == list(range(12))
    # Each worker trained on its half; the reported counts are the whole split.
    assert (df["train_n"] == len(split.train)).all()
    assert (df["val_n"] == len(split.val)).all()
    # ACCM learns the synthetic gestures on held-out subjects (6 classes: chance = 1/6).
    assert df["val_uar"].max() > 0.5
    # The kept model is the best validation epoch, and the file describes itself.
    best_epoch = int(df["val_uar"].idxmax())
    assert result.metrics["best_epoch"] == df.loc[best_epoch, "epoch"]
    model_file = export_model(result, str(tmp_path / "model.pt"))
    blob = torch.load(model_file, weights_only=True)
    mf = load_model(model_file)
    assert mf.classes == manifest.classes
    assert mf.config.model.name == "accm" and mf.model.config.in_channels == 50
    assert mf.config.model.rep_size == 32 and mf.trained_on == TrainedOn(0, 0, "subjects")
    assert mf.config == cfg
    assert blob["git_commit"] and blob["seed"] == cfg.seed

    # evaluate on the same validation rows reproduces the selected epoch's validation UAR
    from distributed import evaluate

    out = tmp_path / "eval"
    assert (
        evaluate.main(
            [
                "--checkpoint",
                model_file,
                "--shards",
                gesture_shards,
                "--fold",
                "0",
                "--inner",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = pd.read_json(out / "summary.json", typ="series")
    assert abs(summary["uar"] - df.loc[best_epoch, "val_uar"]) < 1e-6
    assert (out / "confusion.png").stat().st_size > 1000
    cm = pd.read_csv(out / "confusion.csv", index_col=0)
    assert cm.values.sum() == len(split.val)


def test_worker_failure_is_survived_and_same_seed_gives_same_metrics(
    gesture_shards, tmp_path, ray_session
):
    """A run whose worker dies in epoch 1 (replaced, resumed from the epoch-0 checkpoint) ends
    with exactly the metrics of an uninterrupted run with the same seed: the resume is exact and
    training is deterministic on CPU."""
    train, val, _ = _subject_split(gesture_shards, {"s00", "s01"})
    spec = FoldSpec(train, val)
    cfg = default_config("gesture", epochs=3, **GESTURE_SMALL)
    marker = tmp_path / "failed.txt"
    runs = {}
    data = prepare_datasets(gesture_shards, [spec])
    for name, loop in (("fail", faults.failing_once(epoch=1, rank=1, marker=str(marker))),
                       ("clean", None)):  # fmt: skip
        extra = {"loop": loop} if loop else {}
        runs[name] = fit_folds(
            cfg, data, resources=Resources(workers=2, cpus_per_worker=0.5),
            storage_path=str(tmp_path), name=name, write_model=False, **extra,
        )  # fmt: skip
    assert marker.exists(), "the injected failure did not happen"
    failed = runs["fail"]
    assert list(failed.history["epoch"]) == [0, 1, 2]  # same number of epochs, none repeated
    cols = ["train_loss", "train_uar", "val_loss", "val_uar"]
    np.testing.assert_array_equal(
        failed.history[cols].to_numpy(), runs["clean"].history[cols].to_numpy()
    )


def test_sistcm_learns_frame_order_where_the_baseline_cannot(
    facial_pair_shards, tmp_path, ray_session
):
    """open_mouth and close_mouth hold the same frames in opposite order. With one clip (C = 1)
    the baseline averages its K frames, so it is blind to their order; SISTCM is not. Scored on
    p3, the stream on the clip features: with the faithful loss (cross-entropy on p1's
    probabilities) the p1/p2/fused heads learn far more slowly on a set this small."""
    train, val, subjects = _subject_split(facial_pair_shards, {"s05", "s06"})
    spec = FoldSpec(train, val)
    data = prepare_datasets(facial_pair_shards, [spec])
    base = default_config("facial", clips=1, frames=4, lstm1=16, lstm2=8, epochs=16,
                          batch_size=4, lr=0.01, dropout=0.0)  # fmt: skip
    scores = {}
    for model in ("sistcm", "resnet_tlstm"):
        fit = fit_folds(base.override(model=model), data,
                        resources=Resources(workers=1, cpus_per_worker=1),
                        storage_path=str(tmp_path), name=model, write_model=False)  # fmt: skip
        df = fit.history
        scores[model] = (df["train_p3_war"].max(), df["val_p3_uar"].max(),
                         df["val_p3_uar"].iloc[-3:].mean())  # fmt: skip
    train_acc, best, late = scores["sistcm"]
    assert train_acc >= 0.9, scores  # fits the small training set
    assert best >= 0.9 and late >= 0.75, scores  # and generalises to unseen subjects
    _, b_best, b_late = scores["resnet_tlstm"]
    assert b_best <= 0.7 and b_late <= 0.6, scores  # the order-blind baseline stays at chance


def test_train_cli_applies_overrides_prints_the_epochs_and_writes_the_model(
    gesture_shards, tmp_path, ray_session, capsys
):
    """`python -m distributed.train` in-process: --smoke, --epochs and a --config file reach the
    run; the epoch table, the kept epoch and the model path are printed; the model file says what
    was trained; a config with an unknown key is refused before any Ray work."""
    import json
    import re

    from distributed import train

    conf = tmp_path / "cfg.json"
    conf.write_text(json.dumps({"lr": 0.01, "precise_bn": False}))
    argv = ["gesture", "--shards", gesture_shards, "--fold", "1", "--inner", "0", "--smoke",
            "--epochs", "2", "--config", str(conf), "--out", str(tmp_path / "runs")]  # fmt: skip
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["0", "1"]
    assert "val_uar" in lines[header]
    kept = next(line for line in lines if line.startswith("kept: epoch "))
    model_file = tmp_path / "runs" / "gesture-fold1-inner0" / "model.pt"
    assert f"model: {model_file}" in out
    blob = torch.load(model_file, weights_only=True)
    assert blob["config"]["lr"] == 0.01 and blob["config"]["epochs"] == 2
    assert blob["config"]["precise_bn"] is False
    assert blob["config"]["model"]["width"] == 16  # smoke
    assert blob["trained_on"] == {"outer": 1, "inner": 0, "protocol": "subjects"}
    assert int(kept.split()[2]) in (0, 1)

    conf.write_text(json.dumps({"learning_rate": 0.01}))
    capsys.readouterr()
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: .*cfg\.json: unknown config keys.*learning_rate", err), err
