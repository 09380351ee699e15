"""What a hostile user found on a fresh clone, each now a test: re-running and resuming a training
run, numbers and config values out of range, branches mixed up, outputs that cannot be written,
a search whose trials all fail, a resumed search's trial numbers. Every misuse ends with one line
``error: ...`` on stderr and exit code 2 (a job that ran and failed: exit code 1), no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from datasets.manifest import read_manifest
from distributed.core.config import ConfigError, default_config
from distributed.training.checkpoint import TrainedOn, save_model
from distributed.training.launch import data_info
from distributed.training.steps import build
from tests.lines import one_line_error

pytestmark = pytest.mark.timeout(600)


def _exit_code(main, argv) -> int:
    """A CLI's exit code, whether its ``main`` returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code


@pytest.fixture
def no_ray_work(monkeypatch):
    """Anything that would start Ray, read a fold into Ray or start a fit fails the test."""
    from distributed.core import runtime
    from distributed.training import launch

    def refuse(*args, **kwargs):
        raise AssertionError("Ray work started: the misuse was not refused first")

    for module, name in ((runtime, "init_ray"), (launch, "prepare_datasets"),
                         (launch, "fit_folds")):  # fmt: skip
        monkeypatch.setattr(module, name, refuse)


def _train_argv(shards: str, out: Path, *extra: str) -> list[str]:
    return ["gesture", "--shards", shards, "--fold", "0", "--inner", "0", "--smoke",
            "--epochs", "2", "--out", str(out), *extra]  # fmt: skip


def _epochs_printed(out: str) -> list[str]:
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    return [line.split()[0] for line in lines[header + 1 :] if line.split()[0].isdigit()]


# --- 4. re-running and resuming `train` -------------------------------------------------------


@pytest.fixture(scope="module")
def finished_local_run(gesture_shards, ray_session, tmp_path_factory):
    """One finished `train --local` run (2 epochs); its argv and its folder."""
    import torch

    from distributed import train

    out = tmp_path_factory.mktemp("local-runs")
    argv = _train_argv(gesture_shards, out, "--local")
    threads = torch.get_num_threads()
    try:
        assert train.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return argv, out / "gesture-fold0-inner0"


def test_a_finished_run_run_again_says_so_and_prints_its_table(
    finished_local_run, no_ray_work, capsys
):
    from distributed import train

    capsys.readouterr()
    argv, run = finished_local_run
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{run} already finished (epoch 1 of fold 0 inner 0 was its last)" in out, out
    assert _epochs_printed(out) == ["0", "1"]
    assert f"model: {run / 'model.pt'}" in out


def test_a_killed_run_resumes_with_the_same_inputs_and_refuses_other_ones(
    gesture_shards, ray_session, tmp_path, capsys, monkeypatch
):
    """Killed in its second epoch: a re-run with another --config is refused in one line naming
    the difference (before any Ray work); the same command resumes and says from where."""
    import torch

    from distributed import train
    from distributed.training import loop

    real = loop.run_epoch

    def crash_in_epoch_1(*args, **kwargs):
        if kwargs.get("train") and kwargs.get("epoch") == 1:
            raise RuntimeError("injected crash")
        return real(*args, **kwargs)

    argv = _train_argv(gesture_shards, tmp_path, "--local", "--name", "k")
    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(loop, "run_epoch", crash_in_epoch_1)
        with pytest.raises(RuntimeError, match="injected crash"):
            train.main(argv)
        monkeypatch.setattr(loop, "run_epoch", real)
        other = tmp_path / "other.json"
        other.write_text(json.dumps({"lr": 0.05}))
        capsys.readouterr()
        with monkeypatch.context() as m:
            from distributed.training import launch

            m.setattr(launch, "prepare_datasets", lambda *a, **k: pytest.fail("Ray work"))
            assert train.main(argv + ["--config", str(other)]) == 2
        one_line_error(capsys.readouterr().err, str(tmp_path / "k"),
                        "lr: 0.001 in the checkpoint, 0.05 now", "--name")  # fmt: skip
        assert train.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    checkpoint = tmp_path / "k" / "checkpoint_000000"
    assert f"resuming from epoch 0 of fold 0 inner 0: {checkpoint}" in out, out
    assert _epochs_printed(out) == ["0", "1"]


def test_a_worker_group_run_run_again_is_finished_and_other_inputs_are_refused_before_ray(
    gesture_shards, ray_session, tmp_path, capsys, monkeypatch
):
    """The same on a Ray Train worker group (its own run storage): a finished run is not
    trained again; another config, or the other host, is refused before a worker group starts."""
    from distributed import train

    argv = _train_argv(gesture_shards, tmp_path, "--workers", "1", "--cpus-per-worker", "0.5",
                       "--name", "g")  # fmt: skip
    argv[argv.index("--epochs") + 1] = "1"
    assert train.main(argv) == 0
    capsys.readouterr()
    run = tmp_path / "g"
    from distributed.training import launch

    refuse = lambda *a, **k: pytest.fail("Ray work started")  # noqa: E731
    monkeypatch.setattr(launch, "prepare_datasets", refuse)
    monkeypatch.setattr(launch, "fit_folds", refuse)
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{run} already finished (epoch 0 of fold 0 inner 0 was its last)" in out, out
    assert _epochs_printed(out) == ["0"] and f"model: {run / 'model.pt'}" in out
    other = tmp_path / "wd.yaml"
    other.write_text("weight_decay: 0.01\n")
    assert train.main(argv + ["--config", str(other)]) == 2
    one_line_error(capsys.readouterr().err, "weight_decay: 0.0 in the checkpoint, 0.01 now")
    at = argv.index("--workers")
    assert train.main(argv[:at] + argv[at + 2 :] + ["--local"]) == 2
    one_line_error(capsys.readouterr().err, "a Ray Train worker group", "--local")


# --- 5. numbers and config values are checked before Ray starts -------------------------------


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--samples", "0"], "--samples"),
        (["--epochs", "0"], "--epochs"),
        (["--folds", "0"], "--folds"),
        (["--max-concurrent", "0"], "--max-concurrent"),
        (["--workers-per-trial", "0"], "--workers-per-trial"),
        (["--gpus-per-worker", "-1"], "--gpus-per-worker"),
        (["--gpus-per-worker", "nan"], "--gpus-per-worker"),
        (["--cpus-per-worker", "0"], "--cpus-per-worker"),
        (["--num-cpus", "0"], "--num-cpus"),
        (["--seed", "-3"], "--seed"),
    ],
)
def test_tune_numbers_out_of_range_are_refused(
    flags, needle, gesture_shards, tmp_path, no_ray_work, capsys
):
    from distributed import tune

    argv = ["gesture", "--smoke", "--shards", gesture_shards, "--storage", str(tmp_path), *flags]
    assert _exit_code(tune.main, argv) == 2
    one_line_error(capsys.readouterr().err, needle)
    assert not (tmp_path / "gesture-smoke").exists()


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--epochs", "0"], "--epochs"),
        (["--cpus-per-worker", "0"], "--cpus-per-worker"),
        (["--num-cpus", "-2"], "--num-cpus"),
        (["--materialize-gib", "nan"], "--materialize-gib"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_train_numbers_out_of_range_are_refused(
    flags, needle, gesture_shards, tmp_path, no_ray_work, capsys
):
    from distributed import train

    argv = ["gesture", "--shards", gesture_shards, "--fold", "0", "--out", str(tmp_path), *flags]
    assert _exit_code(train.main, argv) == 2
    one_line_error(capsys.readouterr().err, needle)


@pytest.mark.parametrize(
    "branch,text,needles",
    [
        ("gesture", "lr: -0.01", ["lr", "-0.01"]),
        ("gesture", "lr: abc", ["lr", "'abc'"]),
        ("gesture", "lr: .nan", ["lr", "nan"]),
        ("gesture", "weight_decay: -1.0e-4", ["weight_decay"]),
        ("gesture", "momentum: 1.5", ["momentum"]),
        ("gesture", "gamma: 0", ["gamma"]),
        ("gesture", "epochs: true", ["epochs", "True"]),
        ("gesture", "seed: 1.5", ["seed"]),
        ("gesture", "width: 2.5", ["width", "2.5"]),
        ("gesture", "precise_bn: 'yes'", ["precise_bn", "'yes'"]),
        ("gesture", "representation: 3", ["representation"]),
        ("facial", "fusion_weight: 2", ["fusion_weight"]),
        ("facial", "dropout: 1.0", ["dropout"]),
        ("facial", "frames: '2'", ["frames", "'2'"]),
        ("facial", "normalize: 1", ["normalize"]),
    ],
)
def test_config_values_are_checked_in_one_line_naming_the_file_and_key(
    branch, text, needles, gesture_shards, tmp_path, no_ray_work, capsys
):
    from distributed import train

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text + "\n")
    argv = [branch, "--shards", gesture_shards, "--fold", "0", "--config", str(cfg),
            "--out", str(tmp_path / "runs")]  # fmt: skip
    assert train.main(argv) == 2
    one_line_error(capsys.readouterr().err, "bad.yaml", *needles)


def test_a_tune_config_value_is_checked_before_ray(gesture_shards, tmp_path, no_ray_work, capsys):
    from distributed import tune

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lr: abc\n")
    argv = ["gesture", "--smoke", "--shards", gesture_shards, "--config", str(cfg),
            "--storage", str(tmp_path / "runs")]  # fmt: skip
    assert tune.main(argv) == 2
    one_line_error(capsys.readouterr().err, "bad.yaml", "lr", "'abc'")
    assert not (tmp_path / "runs").exists()


def test_typed_configs_keep_their_types():
    cfg = default_config("gesture", lr=1, gamma=1)
    assert type(cfg.lr) is float and type(cfg.gamma) is float  # an int is a real number
    with pytest.raises(ConfigError, match="batch_size"):
        default_config("gesture", batch_size=8.0)


# --- 8. branches mixed up, outputs that cannot be written, a search whose trials all fail -------


@pytest.fixture(scope="module")
def gesture_model(gesture_shards, tmp_path_factory) -> str:
    """An untrained gesture model file (what `train` writes), trained on outer fold 0's rows."""
    cfg = default_config("gesture", rep_size=16, rep_length=24, width=8, se_reduction=4)
    data = data_info(read_manifest(gesture_shards))
    path = tmp_path_factory.mktemp("model") / "gesture.pt"
    save_model(str(path), build(cfg, data).eval(), cfg, data, TrainedOn(0, None, "subjects"), "t")
    return str(path)


def test_evaluate_names_both_branches_when_a_model_meets_the_other_branchs_shards(
    gesture_shards, tmp_path, capsys
):
    """A facial model whose classes are the gesture shards' classes, scored on those shards:
    refused as the other branch, also with --allow-other-preprocessing."""
    from branches import DataInfo
    from distributed import evaluate

    cfg = default_config("facial", clips=2, frames=1, lstm1=8, lstm2=4)
    classes = tuple(read_manifest(gesture_shards).classes)
    data = DataInfo(classes, {"size": 32, "detector": "none"})
    path = tmp_path / "facial.pt"
    save_model(str(path), build(cfg, data, pretrained=False), cfg, data, TrainedOn(), "t")
    argv = ["--checkpoint", str(path), "--shards", gesture_shards, "--fold", "0",
            "--out", str(tmp_path / "eval")]  # fmt: skip
    for extra in ([], ["--allow-other-preprocessing"]):
        assert evaluate.main(argv + extra) == 2
        one_line_error(capsys.readouterr().err, "facial model", "gesture shards")


def test_export_to_an_unwritable_folder_fails_in_one_line_before_exporting(
    gesture_model, capsys, monkeypatch
):
    from distributed import export

    monkeypatch.setattr(export, "export_program", lambda *a, **k: pytest.fail("exported first"))
    for out in ("/proc/self/model.pt2", "/proc/self/emovis/model.pt2"):
        assert export.main(["--checkpoint", gesture_model, "--out", out]) == 2
        one_line_error(capsys.readouterr().err, out, "cannot write")
    assert export.main(["--checkpoint", gesture_model, "--out", "/proc"]) == 2
    one_line_error(capsys.readouterr().err, "/proc", "folder")


def test_predict_to_unwritable_storage_fails_in_one_line_before_predicting(
    gesture_model, gesture_shards, capsys
):
    from distributed import predict

    raw = Path(gesture_shards).parent / "raw"
    item = str(sorted(raw.rglob("*.npz"))[0])
    for flag, out in (("--out", "/proc/self/p.json"), ("--plot", "/proc/self/plots")):
        assert predict.main([item, "--checkpoint", gesture_model, flag, out]) == 2
        io = capsys.readouterr()
        one_line_error(io.err, out, flag, "cannot write")
        assert io.out == ""  # nothing was predicted


@contextlib.contextmanager
def _output_to(out: Path, err: Path):
    """This process's stdout and stderr (file descriptors and Python's streams) into two files,
    for a module fixture (pytest's capfd is per test)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    files = open(out, "w"), open(err, "w")
    try:
        for fd, f in zip((1, 2), files):
            os.dup2(f.fileno(), fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        for fd, s in zip((1, 2), saved):
            os.dup2(s, fd)
            os.close(s)
        for f in files:
            f.close()


@pytest.fixture(scope="module")
def failed_search(gesture_shards, ray_session, tmp_path_factory):
    """A search (1 outer fold, 2 trials of 1 epoch) whose trials all fail: the shards are
    overwritten after the driver planned its folds, so each trial fails reading its validation
    rows. Returns (shards copy, its pristine copy, storage, argv, exit code, stdout, stderr)."""
    from distributed import tune
    from distributed.search import driver

    tmp = tmp_path_factory.mktemp("failing")
    shards = tmp / "shards"
    shutil.copytree(gesture_shards, shards)
    pristine = tmp / "pristine"
    shutil.copytree(shards, pristine)
    real = driver.prepare_datasets

    def prepare_then_break(root, *args, **kwargs):
        data = real(root, *args, **kwargs)
        for f in Path(root).glob("*.parquet"):
            f.write_bytes(b"not parquet any more")
        return data

    argv = ["gesture", "--smoke", "--shards", str(shards), "--storage", str(tmp), "--name", "f",
            "--folds", "1", "--samples", "2", "--max-concurrent", "1", "--epochs", "1"]  # fmt: skip
    with pytest.MonkeyPatch.context() as m, _output_to(tmp / "out.txt", tmp / "err.txt"):
        m.setattr(driver, "prepare_datasets", prepare_then_break)
        try:
            code = tune.main(argv)
        except RuntimeError as err:  # (what it did before: a traceback, no trials.csv)
            code = f"raised {err!r}"
    out, err = (tmp / "out.txt").read_text(), (tmp / "err.txt").read_text()
    return shards, pristine, tmp, argv, code, out, err


def test_a_search_whose_trials_all_fail_writes_trials_csv_and_names_each_error_once(
    failed_search,
):
    *_, tmp, _, code, out, err = failed_search
    assert code == 1, (code, out[-2000:], err[-2000:])
    one_line_error(err, "no trial of outer fold 0 finished", "trials.csv")
    trials = tmp / "f" / "results" / "trials.csv"
    assert trials.exists()
    text = trials.read_text()
    assert text.count("\n") == 3 and "magic bytes" in text, text
    errors = [ln for ln in out.splitlines() if " failed with: " in ln]
    assert errors and len(set(errors)) == len(errors), out[-3000:]
    assert sum(int(ln.split(" trial")[0].rsplit(" ", 1)[-1]) for ln in errors) == 2, errors
    assert all("magic bytes" in ln for ln in errors), errors


def test_a_resumed_search_keeps_the_numbers_of_its_trials(failed_search, capfd):
    """Trial 2 was running when the driver was killed (its end never reached the ledger): the
    resumed search runs it again as trial 2, not as trial 1."""
    from distributed import tune

    shards, pristine, tmp, argv, *_ = failed_search
    for f in pristine.glob("*.parquet"):
        shutil.copy(f, shards / f.name)
    ledger_file = tmp / "f" / "ledger-outer0.json"
    ledger = json.loads(ledger_file.read_text())
    assert [t["number"] for t in ledger["trials"]] == [0, 1]
    ledger["trials"][1]["end"] = None
    ledger["trials"][1]["results"] = []
    ledger_file.write_text(json.dumps(ledger))
    capfd.readouterr()
    assert tune.main(argv + ["--resume"]) == 0
    out = capfd.readouterr().out
    assert "outer 1/1 trial 2/2 started" in out, out
    assert "trial 1/2" not in out, out
    assert os.path.exists(tmp / "f" / "results" / "report.md")
