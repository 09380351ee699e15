"""Prediction on raw inputs: same numbers as evaluation on shards, failures isolated, Ray = local.

Checkpoints here are untrained models written with ``save_model_checkpoint`` and the preprocessing
record of the session's shard folders: agreement with ``evaluate.predict_fold`` is a question of
identical preprocessing and batching, not of accuracy. Every check that the numbers agree is
paired with a check that a different preprocessing would NOT agree, so the comparison has teeth.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from branches.facial.data import facial_frames
from datasets import shards
from datasets.manifest import read_manifest
from distributed import predict
from distributed.core.config import default_config
from distributed.inference.evaluation import predict_fold
from distributed.training.checkpoint import TrainedOn, load_model, save_model
from distributed.training.launch import data_info
from distributed.training.steps import build

pytestmark = pytest.mark.timeout(240)

FACIAL = dict(clips=2, frames=2, lstm1=16, lstm2=8, dropout=0.0)
GESTURE = dict(rep_size=32, rep_length=48, width=16, se_reduction=4)


def _checkpoint(path, root, cfg):
    data = data_info(read_manifest(root))
    torch.manual_seed(0)
    model = build(cfg, data).eval()
    if cfg.branch == "facial":
        _spread_head(model, root, cfg.model)
    save_model(str(path), model, cfg, data, TrainedOn(), "test")
    return str(path)


def _spread_head(model, root, cfg):
    """Untrained clip features differ little between videos: standardise them inside clip_fc
    (weights / feature std, bias removing the feature mean) so that the outputs differ clearly
    between videos and "predict equals evaluate" is a strict check."""
    from datasets.clips import sample_clips

    table = shards.read_table(root, columns=["frames", "n_frames", "size"])
    videos = [
        facial_frames(f, n, s)
        for f, n, s in zip(
            table["frames"].to_pylist(), table["n_frames"].to_pylist(), table["size"].to_pylist()
        )
    ]
    x = torch.from_numpy(np.stack([sample_clips(v, cfg.clips, cfg.frames) for v in videos]))
    with torch.no_grad():
        f = model.forward_features(x.permute(0, 1, 2, 5, 3, 4)).flatten(0, 1)  # (B*C, 512)
        mu, sd = f.mean(0), f.std(0) + 1e-6
        w = (
            model.head.clip_fc.weight
            / sd
            * (3.0 / f.shape[1] ** 0.5)
            / model.head.clip_fc.weight.std()
        )
        model.head.clip_fc.weight.copy_(w)
        model.head.clip_fc.bias.copy_(-(w @ mu))
        model.head.fc2.weight.mul_(20.0)


@pytest.fixture(scope="module")
def facial_ckpt(facial_pair_shards, tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "facial.pt"
    return _checkpoint(path, facial_pair_shards, default_config("facial", **FACIAL))


@pytest.fixture(scope="module")
def gesture_ckpt(gesture_shards, tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "gesture.pt"
    return _checkpoint(path, gesture_shards, default_config("gesture", **GESTURE))


def _rows(root, n):
    table = shards.read_table(root, columns=["id", "source"])
    ids, src = table["id"].to_pylist(), table["source"].to_pylist()
    order = np.random.default_rng(0).permutation(len(ids))[:n]
    return [ids[i] for i in order], [src[i] for i in order]


def _evaluate(ckpt, root, ids):
    got_ids, _, probs = predict_fold(load_model(ckpt), root, ids)
    return dict(zip(got_ids, probs))


def test_facial_predict_matches_evaluate_on_the_raw_videos(facial_ckpt, facial_pair_shards):
    ids, sources = _rows(facial_pair_shards, 6)
    expected = _evaluate(facial_ckpt, facial_pair_shards, ids)
    p = predict.Predictor.from_checkpoint(facial_ckpt)
    assert p.data.options["size"] == 48 and p.data.options["detector"] == "haar"
    assert (p.cfg.model.clips, p.cfg.model.frames) == (2, 2)
    got = {i: p.predict_path(s) for i, s in zip(ids, sources)}
    names = p.class_names
    probs = np.array([[got[i].probabilities[c] for c in names] for i in ids])
    ref = np.array([expected[i] for i in ids])
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5)
    assert np.ptp(ref, axis=0).max() > 1e-3, "untrained outputs do not vary: the check is blind"
    for i in ids:
        assert got[i].label == names[int(np.argmax(expected[i]))]
        assert got[i].extras["face_fraction"] > 0.5 and not got[i].warnings
        # the timeline is the clip stream whose mean is the model's p1
        tl = got[i].timeline
        assert len(tl) == 2 and tl[0].start_frame == 0 and tl[-1].end_frame == got[i].n_frames - 1
    # the same model on other preprocessing (no face detection: centre crop) gives other numbers
    other = p.with_options(detector="none")
    moved = np.array([[other.predict_path(s).probabilities[c] for c in names] for s in sources])
    assert np.abs(moved - ref).max() > 1e-4

    # frames API: decoded frames, and the stored crops with already_cropped=True
    from datasets.video import read_frames

    direct = p.predict_frames(read_frames(sources[0]))
    np.testing.assert_allclose(list(direct.probabilities.values()), ref[0], atol=1e-5)
    table = shards.read_table(facial_pair_shards, columns=["id", "frames", "n_frames", "size"])
    k = table["id"].to_pylist().index(ids[0])
    crops = facial_frames(table["frames"][k].as_py(), table["n_frames"][k].as_py(),
                                 table["size"][k].as_py())  # fmt: skip
    cropped = p.predict_frames(crops, already_cropped=True)
    np.testing.assert_allclose(list(cropped.probabilities.values()), ref[0], atol=1e-5)


def test_timeline_is_the_clip_stream_and_accepts_more_clips(facial_ckpt, facial_pair_shards):
    _, sources = _rows(facial_pair_shards, 1)
    p = predict.Predictor.from_checkpoint(facial_ckpt, clips=4)
    prep = p.prepare_path(sources[0])
    pred = p.predict_tables([prep])[0]
    assert len(pred.timeline) == 4
    # slow reference: run the model on the 4-clip input and average nothing: per-clip softmax
    from datasets.clips import sample_clips

    row = prep.table.to_pylist()[0]
    video = facial_frames(row["frames"], row["n_frames"], row["size"])
    x = torch.from_numpy(sample_clips(video, 4, 2)[None]).permute(0, 1, 2, 5, 3, 4)
    model = p.mf.model
    with torch.no_grad():
        feats = model.forward_features(x)  # (1, 4, 512)
        ref = torch.stack([model.head.clip_fc(feats[0, c]).softmax(-1) for c in range(4)])
        p1 = model(x)["p1"][0]
    tl = np.array([list(c.probabilities.values()) for c in pred.timeline])
    np.testing.assert_allclose(tl, ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(tl.mean(0), p1.numpy(), atol=1e-5)
    # contiguous segments covering the video, frames inside their segment
    n = pred.n_frames
    assert [c.start_frame for c in pred.timeline][0] == 0 and pred.timeline[-1].end_frame == n - 1
    for a, b in zip(pred.timeline, pred.timeline[1:]):
        assert b.start_frame == a.end_frame + 1
    for c in pred.timeline:
        assert all(c.start_frame <= f <= c.end_frame for f in c.frames)
        assert c.start_s == pytest.approx(c.start_frame / 10.0)  # the generator writes 10 fps
    # the whole-video prediction still uses the checkpoint's C = 2 (what evaluation uses)
    two = predict.Predictor.from_checkpoint(facial_ckpt).predict_tables([prep])[0]
    assert pred.probabilities == two.probabilities


def test_gesture_predict_matches_evaluate(gesture_ckpt, gesture_shards):
    ids, sources = _rows(gesture_shards, 8)
    expected = _evaluate(gesture_ckpt, gesture_shards, ids)
    p = predict.Predictor.from_checkpoint(gesture_ckpt)
    got = [p.predict_path(s) for s in sources]
    probs = np.array([[g.probabilities[c] for c in p.class_names] for g in got])
    ref = np.array([expected[i] for i in ids])
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5)
    assert np.ptp(ref, axis=0).max() > 1e-3
    assert all(g.timeline == () and g.extras == {} for g in got)  # no face field on bodies
    raw = np.load(sources[0])
    joints = np.where(raw["confidence"][..., None] > 0, raw["joints"], np.nan)
    np.testing.assert_allclose(
        list(p.predict_joints(joints).probabilities.values()), ref[0], atol=1e-5
    )
    # without filling the missing joints the representation changes
    other = p.with_options(fill_missing=False)
    moved = [list(other.predict_path(s).probabilities.values()) for s in sources]
    assert np.abs(np.array(moved) - ref).max() > 1e-4


@pytest.fixture(scope="module")
def mixed_folder(facial_pair_shards, tmp_path_factory):
    """3 good videos, a corrupt .avi, a zero-byte .mp4, a faceless video and a stray text file."""
    import shutil

    from datasets.synthetic import write_video

    _, sources = _rows(facial_pair_shards, 3)
    d = tmp_path_factory.mktemp("mixed")
    (d / "sub").mkdir()
    for k, s in enumerate(sources):
        shutil.copy(s, d / ("sub" if k == 2 else ".") / f"good{k}.avi")
    (d / "corrupt.avi").write_bytes(b"RIFF\x10\x00\x00\x00AVI garbage" * 50)
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.txt").write_text("not a video")
    gray = np.full((8, 96, 96, 3), 128, np.uint8)
    gray[:, ::7] = 40  # stripes, no face
    write_video(d / "noface.avi", gray)
    return d


def test_cli_reports_bad_files_and_continues(facial_ckpt, mixed_folder, tmp_path, capsys):
    out = tmp_path / "pred.json"
    plots = tmp_path / "plots"
    code = predict.main([str(mixed_folder), "--checkpoint", facial_ckpt, "--out", str(out),
                         "--plot", str(plots)])  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    status = {r["id"]: r for r in doc["items"]}
    assert set(status) == {"good0", "good1", "sub/good2", "corrupt", "empty", "noface"}
    assert status["corrupt"]["status"] == "error" and "corrupt" in status["corrupt"]["error"]
    assert status["empty"]["status"] == "error" and "zero-byte" in status["empty"]["error"]
    for k in ("good0", "good1", "sub/good2"):
        assert status[k]["status"] == "ok" and status[k]["warnings"] == []
    face = status["noface"]
    assert face["status"] == "ok" and face["face_fraction"] == 0.0
    assert "no face" in face["warnings"][0]
    err = capsys.readouterr().err
    assert "corrupt.avi" in err and "notes.txt" in err and "4 of 6 items predicted" in err
    pngs = sorted(p.name for p in plots.iterdir())
    assert pngs == sorted(f"{k.replace('/', '__')}.png" for k in status if k not in
                          ("corrupt", "empty"))  # fmt: skip
    assert (plots / "good0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # CSV: one "all" row per item plus one per clip for the predicted ones
    csv_out = tmp_path / "pred.csv"
    assert predict.main([str(mixed_folder / "good0.avi"), str(mixed_folder / "corrupt.avi"),
                         "--checkpoint", facial_ckpt, "--out", str(csv_out)]) == 0  # fmt: skip
    import csv

    rows = list(csv.DictReader(csv_out.open()))
    assert [(r["id"], r["clip"], r["status"]) for r in rows] == [
        ("good0", "all", "ok"), ("good0", "0", "ok"), ("good0", "1", "ok"),
        ("corrupt", "all", "error")]  # fmt: skip
    # nothing predictable: non-zero exit
    bad = [str(mixed_folder / "corrupt.avi"), str(mixed_folder / "empty.mp4")]
    assert predict.main([*bad, "--checkpoint", facial_ckpt]) == 1


@pytest.mark.timeout(300)
def test_ray_data_batch_mode_agrees_with_single_mode(facial_ckpt, mixed_folder, tmp_path,
                                                     ray_session):  # fmt: skip
    single, batch = tmp_path / "single.json", tmp_path / "batch.json"
    args = [str(mixed_folder), "--checkpoint", facial_ckpt, "--clips", "3"]
    assert predict.main([*args, "--out", str(single)]) == 0
    assert predict.main([*args, "--out", str(batch), "--batch", "--batch-size", "2"]) == 0
    a, b = (json.loads(p.read_text())["items"] for p in (single, batch))
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["status"] == rb["status"] and ra["error"] == rb["error"]
        if ra["status"] == "ok":
            assert ra["label"] == rb["label"] and ra["warnings"] == rb["warnings"]
            np.testing.assert_allclose(
                list(ra["probabilities"].values()), list(rb["probabilities"].values()), atol=1e-5
            )
            ta = [list(c["probabilities"].values()) for c in ra["timeline"]]
            tb = [list(c["probabilities"].values()) for c in rb["timeline"]]
            assert len(ta) == 3
            np.testing.assert_allclose(ta, tb, atol=1e-5)
            strip = lambda t: [{k: v for k, v in c.items() if k != "probabilities"} for c in t]
            assert strip(ra["timeline"]) == strip(rb["timeline"])


def test_checkpoint_kind_mismatch_and_bad_checkpoint(gesture_ckpt, tmp_path, capsys):
    p = predict.Predictor.from_checkpoint(gesture_ckpt)
    with pytest.raises(ValueError, match="facial checkpoint"):
        p.predict_frames(np.zeros((4, 32, 32, 3), np.uint8))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert predict.main(["x.avi", "--checkpoint", str(junk)]) == 2
    assert "cannot load the checkpoint" in capsys.readouterr().err


def test_prediction_is_frozen():
    pred = predict.Prediction("x", "a", {"a": 1.0})
    with pytest.raises(AttributeError):
        pred.label = "b"
    assert replace(pred, label="b").label == "b"


# --- --device cuda: GPUs for the actors, nothing on the driver's GPU ---------------------------


class _Stop(Exception):
    """Raised by a patched ``map_batches`` once the model actors' call has been seen."""


def test_actor_resources_ask_ray_for_gpus_on_cuda_only():
    from distributed.core.commands import UsageError
    from distributed.inference.batch_predict import actor_device, actor_resources

    assert actor_resources("cpu") == {"num_cpus": 1}
    assert actor_resources("cuda") == {"num_cpus": 1, "num_gpus": 1.0}
    assert actor_resources("cuda:1", 0.25) == {"num_cpus": 1, "num_gpus": 0.25}
    assert actor_resources("cuda", 2) == {"num_cpus": 1, "num_gpus": 2.0}
    for device, gpus in (("cuda", 0), ("cuda", -1), ("cuda", 1.5), ("cpu", 0.5)):
        with pytest.raises(UsageError, match="--gpus-per-actor"):
            actor_resources(device, gpus)
    with pytest.raises(UsageError, match="not a device"):
        actor_resources("gpu")
    # Ray shows an actor only its own GPU(s): an index named on the command line means nothing
    assert actor_device("cuda:3") == actor_device("cuda") == "cuda"
    assert actor_device("cpu") == "cpu"


@pytest.mark.parametrize("device,gpus,expected", [("cuda", None, 1.0), ("cuda", 0.5, 0.5),
                                                  ("cpu", None, None)])  # fmt: skip
def test_batch_prediction_on_cuda_asks_ray_for_gpus(facial_ckpt, ray_session, monkeypatch,
                                                    device, gpus, expected):  # fmt: skip
    """The actor pool's ``map_batches`` call requests GPUs exactly when the model runs on
    CUDA; the job stops there (no GPU here to run it on)."""
    import ray.data

    from distributed.inference import batch_predict

    seen = []
    original = ray.data.Dataset.map_batches

    def recording(self, fn, *args, **kwargs):
        if fn is batch_predict.ModelActor:
            seen.append(kwargs)
            raise _Stop
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", recording)
    data = Path(facial_ckpt).read_bytes()
    extra = {} if gpus is None else {"gpus_per_actor": gpus}
    with pytest.raises(_Stop):
        batch_predict.predict_ray(data, [("a", "a.avi")], device=device, actors=2, **extra)
    (kwargs,) = seen
    assert kwargs.get("num_gpus") == expected and kwargs["num_cpus"] == 1
    assert kwargs["concurrency"] == 2
    assert kwargs["fn_constructor_kwargs"]["device"] == device


def test_cuda_prediction_loads_nothing_on_the_driver_gpu(facial_ckpt, monkeypatch, capsys):
    """``predict --device cuda --batch`` on a machine without a GPU (a cluster's head): the
    driver reads the checkpoint on the CPU and hands the device to the Ray Data job."""
    from distributed.inference import batch_predict

    locations, calls = [], []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        locations.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    def fake_predict_ray(checkpoint, items, **kwargs):
        calls.append(kwargs)
        return [{"id": i, "path": p, "status": "error", "error": "not run"} for i, p in items]

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(batch_predict, "predict_ray", fake_predict_ray)
    args = ["x.avi", "--checkpoint", facial_ckpt, "--device", "cuda"]

    def run(*extra):
        parsed = predict.build_parser().parse_args([*args, "--batch", *extra])
        return predict.predict(predict.PredictArgs(**vars(parsed)))

    results, predictor = run()
    assert locations and all(str(loc) == "cpu" for loc in locations), locations
    assert predictor.device.type == "cpu" and [r["id"] for r in results] == ["x"]
    assert calls[-1]["device"] == "cuda"
    run("--gpus-per-actor", "0.5")
    assert calls[-1]["device"] == "cuda" and calls[-1]["gpus_per_actor"] == 0.5
    # In this process --device cuda needs a GPU here: without one, one clear line, exit 2.
    if not torch.cuda.is_available():
        assert predict.main(args) == 2
        assert "--device cuda: not usable on this machine" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_a_truncated_mp4_gives_one_line_and_no_library_noise(
    facial_ckpt, mixed_folder, tmp_path, ray_session, capfd
):
    """Half of an MP4 (its index, the moov atom, is written last): one line naming the file,
    and none of OpenCV's, FFmpeg's or Ray Data's own lines, in both modes (finding 10)."""
    import cv2

    whole, half = tmp_path / "whole.mp4", tmp_path / "half.mp4"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for i in range(10):
        writer.write(np.full((64, 64, 3), 20 * i, np.uint8))
    writer.release()
    data = whole.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    args = [str(half), str(mixed_folder / "good0.avi"), "--checkpoint", facial_ckpt]
    for extra in ([], ["--batch"]):
        capfd.readouterr()
        assert predict.main([*args, *extra]) == 0
        out, err = capfd.readouterr()
        lines = [x for x in (out + err).splitlines() if x.strip()]
        assert lines[-1] == "1 of 2 items predicted", lines
        assert f"error: {half}: mp4 container cannot be opened (truncated or corrupt)" in lines
        noise = ("WARN", "cap.cpp", "moov", "logging_progress", "streaming_executor", "Dataset")
        assert not [x for x in lines if any(n in x for n in noise)], lines
        # the error, the prediction, the summary (and in batch mode Ray's C++ note that its
        # actors' constructor argument, the checkpoint, is in the object store: README, limits)
        assert len([x for x in lines if "core_worker.cc" not in x]) == 3, lines
