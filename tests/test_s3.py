"""Object storage end to end: every command reads and writes ``s3://`` URIs on a local
S3-compatible server (moto, 127.0.0.1 only; see ``s3_server`` in conftest.py), Ray's workers
included, and an unusable store ends in one line."""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from datasets import shards, storage
from datasets.manifest import read_manifest, read_protocol

pytestmark = pytest.mark.timeout(600)  # a shared 2-core machine under load: generous


def _keys(uri: str) -> dict[str, tuple[int, object]]:
    """Every object under ``uri``: key -> (size, last modified)."""
    fs, inner = storage.resolve(uri)
    found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    return {i.path: (i.size, i.mtime) for i in found if i.type == pafs.FileType.File}


def _manifest_doc(root: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(root, "manifest.json")))


def _same_shards(local: str, remote: str) -> None:
    """The bucket holds exactly what local disk holds: rows, manifest, protocols."""
    a, b = shards.read_table(local), shards.read_table(remote)
    assert a.schema == b.schema
    assert a.num_rows == b.num_rows > 0
    assert a.equals(b)  # every column, byte for byte (frames / joints included)
    ma, mb = _manifest_doc(local), _manifest_doc(remote)
    assert ma == mb, {
        k: (ma.get(k), mb.get(k)) for k in set(ma) | set(mb) if ma.get(k) != mb.get(k)
    }
    assert read_protocol(local, read_manifest(local)) == read_protocol(
        remote, read_manifest(remote)
    )
    names = lambda root: sorted(Path(p).name for p in storage.list_files(root))  # noqa: E731
    assert names(local) == names(remote)


def _preprocess(kind: str, source: Path, out: str, *extra: str) -> None:
    from distributed import preprocess

    argv = [kind, "--source", str(source), "--out", out, "--folds", "3", "--inner-folds", "2"]
    assert preprocess.main([*argv, *extra]) == 0


@pytest.fixture(scope="module")
def bucket(s3_server):
    return s3_server("emovis-test")


@pytest.fixture(scope="module")
def s3_gesture(bucket, gesture_shards, ray_session):
    """The session's synthetic gestures preprocessed again, straight into the bucket."""
    out = f"{bucket}/shards/gesture"
    _preprocess("gesture", Path(gesture_shards).parent / "raw", out)
    return out


def test_preprocess_writes_into_a_bucket_exactly_what_it_writes_to_disk(
    s3_gesture, gesture_shards, facial_pair_shards, bucket
):
    _same_shards(gesture_shards, s3_gesture)
    # faces (uint8 frames, Haar detection in the Ray Data tasks) the same way
    out = f"{bucket}/shards/facial"
    _preprocess("facial", Path(facial_pair_shards).parent / "raw", out, "--size", "48")
    _same_shards(facial_pair_shards, out)
    # a second run over the same output keeps every finished shard (summaries read from S3)
    before = _keys(out)
    _preprocess("facial", Path(facial_pair_shards).parent / "raw", out, "--size", "48")
    after = _keys(out)
    shard_objects = [k for k in before if k.endswith(".parquet")]
    assert shard_objects and all(after[k] == before[k] for k in shard_objects)


def test_train_evaluate_and_predict_through_a_bucket(s3_gesture, gesture_shards, bucket, tmp_path):
    from distributed import evaluate, predict
    from distributed.train import TrainArgs, train

    fit, model_uri, _ = train(
        TrainArgs("gesture", s3_gesture, fold=0, inner=0, smoke=True, out=f"{bucket}/train")
    )
    assert model_uri == f"{bucket}/train/gesture-fold0-inner0/model.pt"
    objects = _keys(f"{bucket}/train/gesture-fold0-inner0")
    assert any("/checkpoint_" in k for k in objects)  # Ray Train's checkpoints went there too
    best = fit.history["val_uar"].max()

    # evaluate reads the checkpoint from the bucket and writes its report there; scoring the
    # validation rows the epoch was chosen on gives that epoch's validation UAR back
    out = f"{bucket}/eval"
    argv = ["--checkpoint", model_uri, "--shards", s3_gesture, "--fold", "0", "--inner", "0"]
    assert evaluate.main([*argv, "--out", out]) == 0
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert abs(summary["uar"] - best) < 1e-6
    assert len(storage.read_bytes(f"{out}/confusion.png")) > 1000

    # predict with the checkpoint in the bucket = predict with a local copy of it
    local_model = tmp_path / "model.pt"
    local_model.write_bytes(storage.read_bytes(model_uri))
    files = [str(p) for p in sorted((Path(gesture_shards).parent / "raw").glob("*/*.npz"))[:3]]
    assert predict.main([*files, "--checkpoint", model_uri, "--out", f"{bucket}/pred.csv"]) == 0
    local_out = tmp_path / "pred.csv"
    assert predict.main([*files, "--checkpoint", str(local_model), "--out", str(local_out)]) == 0
    remote = list(csv.DictReader(io.StringIO(storage.read_bytes(f"{bucket}/pred.csv").decode())))
    assert len(remote) >= 3 and remote == list(csv.DictReader(open(local_out)))


# Files Tune rewrites when it restores an experiment (its own state snapshots, not results).
TUNE_STATE = ("experiment_state", "search_gen_state", "searcher-state", "tuner.pkl", ".validate")


@pytest.mark.timeout(1200)  # two searches (~3.5 min on an idle machine), 10+ min at load 80
def test_tune_in_a_bucket_resumes_without_rerunning_a_finished_outer_fold(
    s3_gesture, bucket, tmp_path, monkeypatch
):
    """Shards, trials' checkpoints, Tune's experiment state, models and reports all live in the
    bucket; ``--resume`` with one more outer fold restores outer fold 0 from there (no trial,
    final fit or score is redone) and runs only outer fold 1."""
    from distributed import evaluate, tune

    monkeypatch.chdir(tmp_path)  # nothing but the log may land on local disk by a relative default
    runs = f"{bucket}/runs"
    argv = ["gesture", "--smoke", "--shards", s3_gesture, "--storage", runs, "--name", "r"]
    argv += ["--samples", "1", "--quiet"]
    assert tune.main([*argv, "--folds", "1"]) == 0
    first = _keys(f"{runs}/r")
    folds_first = storage.read_bytes(f"{runs}/r/results/folds.csv").decode().splitlines()
    assert len(folds_first) == 2  # header + outer fold 0
    # Tune uploads its experiment folder (outer0/) again after a restore, so objects there get
    # new timestamps; what matters is their content. Outside it (Train's checkpoints, the final
    # model) nothing may be written at all.
    in_experiment = lambda k: "/r/outer0/" in k  # noqa: E731
    results0 = {
        k: storage.read_bytes(f"s3://{k}")
        for k in first
        if in_experiment(k) and k.endswith(("result.json", "final.json"))
    }
    assert len(results0) == 2  # one trial, one final score

    assert tune.main([*argv, "--folds", "2", "--resume"]) == 0
    after = _keys(f"{runs}/r")
    for key in results0:  # no trial appended a result, the final score is the stored one
        assert storage.read_bytes(f"s3://{key}") == results0[key], key
    outer0 = lambda keys: {k for k in keys if "outer0" in k and not in_experiment(k)}  # noqa: E731
    assert outer0(first) and outer0(after) == outer0(first)  # no new checkpoint or model
    for key in outer0(first):
        assert after[key] == first[key], f"{key} was rewritten on resume"
    new0 = [k for k in set(after) - set(first) if in_experiment(k)]
    assert all(Path(k).name.startswith(TUNE_STATE) for k in new0), new0
    folds_second = storage.read_bytes(f"{runs}/r/results/folds.csv").decode().splitlines()
    assert folds_second[:2] == folds_first and len(folds_second) == 3
    assert any("/outer1/trial_driver_" in k for k in after)
    # the one local thing: the console's log file (a file descriptor cannot write to a bucket)
    local = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert local and all(p.parts[:2] == ("logs", "r") and p.suffix == ".log" for p in local), local

    # the search's outer-fold-1 model, read back from the bucket, scores its test fold as the
    # search did
    final = json.loads(storage.read_bytes(f"{runs}/r/outer1/final.json"))
    out = f"{bucket}/eval-outer1"
    model = f"{runs}/r/models/outer1.pt"
    assert (
        evaluate.main(["--checkpoint", model, "--shards", s3_gesture, "--fold", "1", "--out", out])
        == 0
    )
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert abs(summary["war"] - final["war"]) < 1e-9 and abs(summary["uar"] - final["uar"]) < 1e-9


@pytest.mark.parametrize("problem", ["unreachable", "no such bucket", "no credentials"])
def test_an_unusable_object_store_ends_in_one_line(
    problem, bucket, gesture_shards, tmp_path, monkeypatch, capsys
):
    from distributed import evaluate, predict, preprocess, train, tune

    root = f"{bucket}/unusable"
    storage.atomic_write_bytes(f"{root}/model.pt", b"not a model")
    storage.atomic_write_bytes(f"{root}/shards/manifest.json", b"{}")
    expect = {
        "unreachable": "cannot reach the object store at the endpoint AWS_ENDPOINT_URL=",
        "no such bucket": "does not exist",
        "no credentials": "access denied by the object store: no AWS credentials were found",
    }[problem]
    if problem == "unreachable":
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            closed = sock.getsockname()[1]
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    elif problem == "no such bucket":
        root = "s3://no-such-bucket/unusable"
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    raw = Path(gesture_shards).parent / "raw"
    joint_file = str(sorted(raw.glob("*/*.npz"))[0])
    runs = {
        "preprocess": lambda: preprocess.main(
            ["gesture", "--source", str(raw), "--out", f"{root}/new"]
        ),
        "train": lambda: train.main(["gesture", "--shards", f"{root}/shards", "--fold", "0"]),
        "tune": lambda: tune.main(
            ["gesture", "--shards", gesture_shards, "--storage", f"{root}/runs"]
        ),
        "evaluate": lambda: evaluate.main(
            ["--checkpoint", f"{root}/model.pt", "--shards", gesture_shards, "--fold", "0"]
        ),
        "predict": lambda: predict.main([joint_file, "--checkpoint", f"{root}/model.pt"]),
    }
    if problem == "no credentials":  # moto, unlike AWS, lets anonymous requests read objects
        runs = {k: runs[k] for k in ("preprocess", "tune")}
    for name, run in runs.items():
        capsys.readouterr()
        assert run() == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {root}/"), (name, err)
        assert expect in err[0], (name, err)


def test_a_streamed_fold_reads_from_the_bucket_what_it_reads_from_disk(s3_gesture, gesture_shards):
    from branches import get_branch
    from distributed.training.ray_data import shard_row_groups
    from distributed.training.stream import StreamedFold

    columns = list(get_branch("gesture").columns)
    protocol = read_protocol(gesture_shards, read_manifest(gesture_shards))[1]
    ids = protocol.fold(0).inner[0].train

    def epoch(root, rank):
        fold = StreamedFold.plan(shard_row_groups(root, columns), columns, ids, split=True)
        rows = []
        for b in fold.shard(rank, 2).iter_torch_batches(
            batch_size=4,
            collate_fn=lambda batch: [
                (str(i), bytes(j)) for i, j in zip(batch["id"], batch["joints"])
            ],
            local_shuffle_buffer_size=8,
            local_shuffle_seed=5,
        ):
            rows += b
        return rows

    for rank in (0, 1):
        local, remote = epoch(gesture_shards, rank), epoch(s3_gesture, rank)
        assert remote == local and len(local) == len(ids) // 2
