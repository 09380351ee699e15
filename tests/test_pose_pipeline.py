"""Bodies from raw video through the whole pipeline: --pose mediapipe preprocessing of real
people, ids that match the face shards of the same folder, and prediction on a video with a
gesture checkpoint equal to evaluating its shard row."""

from __future__ import annotations

import numpy as np
import pytest

from branches.gesture.data import gesture_arrays
from datasets import pose

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not pose.mediapipe_available(), reason="MediaPipe not installed (make pose)"
    ),
]


@pytest.fixture(scope="module")
def people_videos(tmp_path_factory):
    """<label>/<subject>_0.avi: three real people moving over 16 frames, and one noise clip."""
    from datasets.synthetic import write_video
    from tests.test_pose import _people, moving_clip

    root = tmp_path_factory.mktemp("people")
    for k, (name, photo) in enumerate(_people().items()):
        label = ("wave", "bow", "wave")[k]
        (root / label).mkdir(exist_ok=True)
        frames, _, _ = moving_clip(photo, n=16)
        write_video(root / label / f"{name}_0.avi", frames)
    noise = np.random.default_rng(0).integers(0, 256, (16, 240, 320, 3), dtype=np.uint8)
    write_video(root / "bow" / "noise_0.avi", noise)
    return root


@pytest.fixture(scope="module")
def pose_shards(people_videos, tmp_path_factory, ray_session):
    from distributed import preprocess

    out = tmp_path_factory.mktemp("pose") / "shards"
    argv = ["gesture", "--source", str(people_videos), "--pose", "mediapipe", "--out", str(out),
            "--per-shard", "2"]  # fmt: skip
    assert preprocess.main(argv) == 0
    return str(out)


def test_pose_preprocessing_writes_33_landmarks_and_skips_the_noise(pose_shards):
    from datasets import shards
    from datasets.manifest import read_manifest

    manifest = read_manifest(pose_shards)
    assert manifest.num_joints == 33 and manifest.options["pose"] == "mediapipe"
    assert manifest.counts.written == 3 and manifest.counts.skipped == 1
    ((path, why),) = manifest.skipped
    assert path.endswith("noise_0.avi") and "no person found" in why
    table = shards.read_table(pose_shards)
    assert set(table["layout"].to_pylist()) == {"mediapipe33"}
    for rec in table.to_pylist():
        joints, conf = gesture_arrays(rec["joints"], rec["confidence"], rec["n_frames"],
                                             rec["n_joints"], rec["dims"])  # fmt: skip
        assert joints.shape == (16, 33, 2) and np.isfinite(joints).all()
        assert (conf > 0.5).mean() > 0.3  # shoulders, hips, face: seen


def test_face_and_body_shards_of_one_folder_share_their_ids(people_videos, pose_shards, tmp_path):
    from datasets import shards
    from distributed import preprocess

    faces = tmp_path / "faces"
    assert preprocess.main(["facial", "--source", str(people_videos), "--out", str(faces),
                            "--size", "32"]) == 0  # fmt: skip
    face_ids = set(shards.read_table(str(faces), columns=["id"])["id"].to_pylist())
    body_ids = set(shards.read_table(pose_shards, columns=["id"])["id"].to_pylist())
    assert body_ids == {"wave/astronaut_0", "bow/hopper_0", "wave/cameraman_0"}
    assert body_ids < face_ids and face_ids - body_ids == {"bow/noise_0"}


def test_predict_on_a_video_with_a_gesture_checkpoint_equals_evaluation(pose_shards, tmp_path):
    import torch

    from datasets import shards
    from datasets.manifest import read_manifest
    from distributed.core.config import default_config
    from distributed.inference.evaluation import predict_fold
    from distributed.inference.predictor import Predictor
    from distributed.training.checkpoint import TrainedOn, load_model, save_model
    from distributed.training.launch import data_info
    from distributed.training.steps import build

    cfg = default_config("gesture", rep_size=32, rep_length=16, width=8, se_reduction=4)
    data = data_info(read_manifest(pose_shards))
    torch.manual_seed(0)
    path = tmp_path / "body.pt"
    save_model(str(path), build(cfg, data).eval(), cfg, data, TrainedOn(), "t")
    table = shards.read_table(pose_shards, columns=["id", "source"])
    ids, sources = table["id"].to_pylist(), table["source"].to_pylist()
    _, _, expected = predict_fold(load_model(str(path)), pose_shards, ids)
    p = Predictor.from_checkpoint(str(path))
    got = np.array([list(p.predict_path(s).probabilities.values()) for s in sources])
    order = np.argsort(ids)  # predict_fold returns rows in shard (id) order
    np.testing.assert_allclose(got[order], expected, atol=1e-5)
    assert np.ptp(expected, axis=0).max() > 1e-4  # the comparison is not between constants


def test_without_mediapipe_the_pose_option_says_how_to_install(people_videos, tmp_path,
                                                               monkeypatch, capsys):  # fmt: skip
    from distributed import preprocess

    monkeypatch.setattr(pose, "_reason", lambda: "mediapipe is not installed")
    code = preprocess.main(["gesture", "--source", str(people_videos), "--pose", "mediapipe",
                            "--out", str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "make pose" in err and "--no-deps" in err


def test_predict_with_a_face_and_a_body_checkpoint_fuses_them(people_videos, pose_shards,
                                                             tmp_path, capsys):  # fmt: skip
    import json

    import torch

    from datasets.manifest import read_manifest
    from distributed import predict
    from distributed.core.config import default_config
    from distributed.inference.late_fusion import fuse
    from distributed.training.checkpoint import TrainedOn, save_model
    from distributed.training.launch import data_info
    from distributed.training.steps import build

    body_cfg = default_config("gesture", rep_size=32, rep_length=16, width=8, se_reduction=4)
    body_data = data_info(read_manifest(pose_shards))
    face_cfg = default_config("facial", clips=2, frames=2, lstm1=8, lstm2=4, head="p3")
    face_data = type(body_data)(body_data.classes, {"size": 32, "detector": "haar", "every": 5,
                                                    "margin": 0.2, "max_frames": None})  # fmt: skip
    torch.manual_seed(0)
    files = {}
    for name, cfg, data in (("face", face_cfg, face_data), ("body", body_cfg, body_data)):
        files[name] = str(tmp_path / f"{name}.pt")
        save_model(files[name], build(cfg, data).eval(), cfg, data, TrainedOn(), "t")
    video = str(people_videos / "wave" / "astronaut_0.avi")
    out = tmp_path / "p.json"
    assert predict.main([video, "--checkpoint", files["body"], "--checkpoint", files["face"],
                         "--fusion-weight", "0.3", "--out", str(out)]) == 0  # fmt: skip
    (item,) = json.loads(out.read_text())["items"]
    names = list(body_data.classes)
    pf = np.array([[item["branches"]["face"]["probabilities"][c] for c in names]])
    pb = np.array([[item["branches"]["body"]["probabilities"][c] for c in names]])
    np.testing.assert_allclose([item["probabilities"][c] for c in names], fuse(pf, pb, 0.3)[0],
                               atol=1e-6)  # fmt: skip
    alone = predict.Predictor.from_checkpoint(files["body"]).predict_path(video)
    assert item["branches"]["body"]["probabilities"] == pytest.approx(alone.probabilities)
    capsys.readouterr()
    assert predict.main([video, "--checkpoint", files["body"], "--checkpoint", files["body"]]) == 2
    assert "two branches" in capsys.readouterr().err


def test_the_console_of_a_pose_job_holds_our_lines_only(people_videos, tmp_path):
    """MediaPipe's native warnings (several a video) stay in Ray's worker logs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    cmd = [sys.executable, "-m", "distributed.preprocess", "gesture", "--source",
           str(people_videos), "--pose", "mediapipe", "--out", str(tmp_path / "s"),
           "--per-shard", "2", "--num-cpus", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "W0000" not in proc.stdout + proc.stderr and "pid=" not in proc.stderr
    assert "gesture shards written" in proc.stdout and "noise_0.avi" in proc.stdout
