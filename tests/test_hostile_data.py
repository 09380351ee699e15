"""What a hostile user does to the data side, and the one-line answers: flags that make no sense,
one-class sets, mixed joint layouts, re-runs into an existing output, official splits too small
to stratify, and Ctrl-C in the middle of a job."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets import shards
from datasets.manifest import ManifestError, read_manifest, read_protocol
from datasets.synthetic_gesture import write_gesture_set
from distributed import folds as folds_cli
from distributed import preprocess
from distributed.preprocessing.tasks import SUMMARY_SUFFIX
from tests.lines import one_line_error
from tests.procs import alive, descendants

pytestmark = pytest.mark.timeout(150)
ROOT = Path(__file__).resolve().parents[1]


def _gesture_argv(source, out, *extra) -> list[str]:
    return ["gesture", "--source", str(source), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def gestures(tmp_path_factory) -> Path:
    """4 subjects x 6 classes x 1 sequence (BODY_25-like (T, 25, 2) .npz files)."""
    root = tmp_path_factory.mktemp("hostile-gestures")
    write_gesture_set(root, n_subjects=4, per_class=1, seed=3)
    return root


# --- 5: flags that make no sense are refused before any work ------------------------------------


@pytest.mark.parametrize(
    "flags, needle",
    [
        (("--max-frames", "0"), "--max-frames"),
        (("--per-shard", "0"), "--per-shard"),
        (("--folds", "1"), "--folds"),
        (("--inner-folds", "0"), "--inner-folds"),
        (("--num-cpus", "0"), "--num-cpus"),
        (("--seed", "-1"), "--seed"),
        (("--subject-pattern", "^s"), "has no group"),
        (("--subject-pattern", "(s"), "--subject-pattern"),
    ],
)
def test_preprocess_refuses_flags_that_make_no_sense_before_any_work(
    gestures, tmp_path, capsys, flags, needle
):
    out = tmp_path / "out"
    code = preprocess.main(_gesture_argv(gestures, out, *flags))
    assert code == 2
    one_line_error(capsys.readouterr().err, needle, flags[1])
    assert not out.exists()


def test_folds_cli_refuses_flags_that_make_no_sense(tmp_path, capsys):
    for flags in (("--folds", "1"), ("--inner-folds", "0"), ("--seed", "-3")):
        code = folds_cli.main([str(tmp_path / "none"), "--protocol", "subjects", *flags])
        assert code == 2
        one_line_error(capsys.readouterr().err, flags[0], flags[1])


# --- 6: one class is not a classification -------------------------------------------------------


def test_a_single_class_is_refused_before_writing(gestures, tmp_path, capsys):
    one = tmp_path / "one"
    shutil.copytree(gestures / "bow", one / "bow")
    out = tmp_path / "out"
    assert preprocess.main(_gesture_argv(one, out)) == 2
    one_line_error(capsys.readouterr().err, "one class", "'bow'")
    assert not out.exists()


def test_a_class_list_entry_that_matches_nothing_is_named(gestures, tmp_path, capsys):
    out = tmp_path / "out"
    assert preprocess.main(_gesture_argv(gestures, out, "--classes", "bow,shrugg")) == 2
    one_line_error(capsys.readouterr().err, "'shrugg'", "'shrug'")
    assert preprocess.main(_gesture_argv(gestures, out, "--classes", "bow,open_mout")) == 2
    one_line_error(capsys.readouterr().err, "'open_mout'")
    listing = tmp_path / "labels.txt"
    listing.write_text("".join(f"{p.relative_to(gestures)} {p.parent.name}\n"
                               for p in sorted(gestures.rglob("*.npz"))))  # fmt: skip
    argv = _gesture_argv(gestures, out, "--layout", "list", "--labels", str(listing))
    assert preprocess.main([*argv, "--classes", "bow,Shrug"]) == 2
    one_line_error(capsys.readouterr().err, "labels.txt", "'Shrug'", "'shrug'")
    assert not out.exists()


# --- 7: joint files of another layout are skipped and named, and the job finishes --------------


def _openpose_frame(path: Path, joints: np.ndarray) -> None:
    flat = np.concatenate([joints, np.ones((len(joints), 1))], axis=1).ravel().tolist()
    path.write_text(json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": flat}]}))


@pytest.fixture(scope="module")
def mixed_job(gestures, tmp_path_factory, ray_session):
    """The gesture set plus three files of other layouts, preprocessed once (2 outer folds)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("mixed")
    src = root / "src"
    shutil.copytree(gestures, src)
    rng = np.random.default_rng(0)
    odd = {
        "bow/s09_17.npy": "17 joints",
        "shrug/s09_kinect.csv": "kinect25",
        "wave_left/s09_header.csv": "header",
    }
    np.save(src / "bow" / "s09_17.npy", rng.uniform(100, 400, (30, 17, 2)).astype(np.float32))
    values = rng.uniform(-1, 1, (12, 75))
    names = [f"j{j}_{a}" for j in range(25) for a in "xyz"]
    rows = "\n".join(",".join(f"{v:.4f}" for v in row) for row in values)
    (src / "shrug" / "s09_kinect.csv").write_text(",".join(names) + "\n" + rows + "\n")
    short = ",".join(f"c{i}" for i in range(10))  # a 10-name header over 75 values a line
    (src / "wave_left" / "s09_header.csv").write_text(short + "\n" + rows + "\n")
    out = root / "shards"
    argv = _gesture_argv(src, out, "--folds", "2", "--inner-folds", "2", "--per-shard", "8")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = preprocess.main(argv)
    return {"code": code, "out": out, "argv": argv, "odd": odd, "src": src,
            "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}  # fmt: skip


def test_joint_files_of_another_layout_are_skipped_named_and_counted(mixed_job):
    assert mixed_job["code"] == 0, mixed_job["stderr"]
    printed = mixed_job["stdout"]
    src = mixed_job["src"]
    for rel, why in mixed_job["odd"].items():
        lines = [line for line in printed.splitlines() if str(src / rel) in line]
        assert len(lines) == 1 and "skipped" in lines[0] and why in lines[0], (rel, printed)
    manifest = read_manifest(str(mixed_job["out"]))
    assert manifest.counts.skipped == 3 and manifest.counts.written == 24
    assert manifest.num_joints == 25
    table = shards.read_table(str(mixed_job["out"]), columns=["layout", "n_joints"])
    assert set(zip(table["layout"].to_pylist(), table["n_joints"].to_pylist())) == {("array", 25)}


def test_a_rerun_after_skipped_layouts_works(mixed_job, capsys):
    assert preprocess.main(mixed_job["argv"]) == 0
    printed = capsys.readouterr().out
    assert "already done, 0 to do" in printed and "rows written" in printed


def test_joint_layouts_without_a_majority_are_refused(tmp_path, capsys):
    src = tmp_path / "src"
    rng = np.random.default_rng(1)
    for label in ("bow", "shrug"):
        (src / label).mkdir(parents=True)
        for k, joints in enumerate((25, 17)):
            arr = rng.uniform(100, 400, (20, joints, 2)).astype(np.float32)
            np.save(src / label / f"s{k}_x.npy", arr)
    out = tmp_path / "out"
    assert preprocess.main(_gesture_argv(src, out)) == 2
    one_line_error(capsys.readouterr().err, "17 joints", "25 joints")
    assert not out.exists()


# --- 8: a re-run keeps the default protocol ------------------------------------------------------


def test_a_rerun_whose_folds_fail_keeps_the_default_protocol(
    gestures, tmp_path, ray_session, capsys
):
    out = tmp_path / "shards"
    argv = _gesture_argv(gestures, out, "--per-shard", "8", "--folds", "2")
    # 4 subjects: 2 outer folds leave 2 training subjects, too few for the default 3 inner splits
    assert preprocess.main(argv) == 0
    assert "no folds written" in capsys.readouterr().out
    assert folds_cli.main([str(out), "--protocol", "subjects", "--folds", "2",
                           "--inner-folds", "2"]) == 0  # fmt: skip
    assert read_manifest(str(out)).protocol == "subjects"
    capsys.readouterr()
    assert preprocess.main(argv) == 0  # the same re-run: its folds fail again
    manifest = read_manifest(str(out))
    assert manifest.protocol == "subjects"
    key, protocol = read_protocol(str(out), manifest)  # what train reads
    assert key == "subjects" and len(protocol.outer) == 2
    printed = capsys.readouterr().out
    assert "no folds written" in printed and "the default stays 'subjects'" in printed


# --- 9: official splits are always written -------------------------------------------------------

FERV = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")


def _ferv39k(root: Path, train_per_class: dict[str, int]) -> Path:
    """A FERV39k-shaped tree: one scene, 16x16 frame folders, the All_scenes train/test lists."""
    lines = {"train": [], "test": []}
    for cls in FERV:
        for role, n in (("train", train_per_class.get(cls, 3)), ("test", 1)):
            for k in range(n):
                clip = f"Action/{cls}/{role}{k:02d}"
                folder = root / "2_ClipsforFaceCrop" / clip
                folder.mkdir(parents=True)
                for j in range(1, 4):
                    cv2.imwrite(str(folder / f"{j}.jpg"), np.full((16, 16, 3), 20 * j, np.uint8))
                lines[role].append(f"{clip} {cls}")
    setups = root / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    for role, rows in lines.items():
        (setups / f"{role}_All.csv").write_text("\n".join(rows) + "\n")
    return root


def test_official_split_with_a_rare_class_is_written_with_a_warning(tmp_path, ray_session, capsys):
    src = _ferv39k(tmp_path / "FERV39k", {"Fear": 1})
    out = tmp_path / "shards"
    argv = ["facial", "--source", str(src), "--layout", "ferv39k", "--detector", "none",
            "--size", "16", "--out", str(out), "--per-shard", "64"]  # fmt: skip
    assert preprocess.main(argv) == 0
    io = capsys.readouterr()
    assert "no folds written" not in io.out
    warnings = [line for line in io.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'Fear'" in warnings[0], io.err
    manifest = read_manifest(str(out))
    key, protocol = read_protocol(str(out), manifest)
    assert key == "ferv39k" and len(protocol.outer) == 1 and len(protocol.outer[0].inner) == 3
    assert "'Fear'" in protocol.description and "stratified" in protocol.description


def test_official_folds_hint_names_the_official_protocol(tmp_path, ray_session, capsys):
    # one training clip in all: no inner split can be drawn from it
    src = _ferv39k(tmp_path / "FERV39k", {cls: int(cls == "Happy") for cls in FERV})
    out = tmp_path / "shards"
    argv = ["facial", "--source", str(src), "--layout", "ferv39k", "--detector", "none",
            "--size", "16", "--out", str(out), "--per-shard", "64"]  # fmt: skip
    assert preprocess.main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("no folds"))
    assert "--protocol ferv39k" in line and "--protocol subjects" not in line
    with pytest.raises(ManifestError) as refused:  # what train and tune say to such shards
        read_protocol(str(out), read_manifest(str(out)))
    assert "--protocol ferv39k" in str(refused.value) and "subjects" not in str(refused.value)


# --- 1: Ctrl-C stops the job in one line and the same command resumes ---------------------------


RAY_WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\([\w.]+ pid=\d+(, ip=[\d.]+)?\)")
STUCK_POSE = np.random.default_rng(1).uniform(100, 400, (25, 2))


def _openpose_set(root: Path, n: int = 12) -> None:
    """``n`` OpenPose folders of 3 frames in each of 2 classes (subjects s00..s03)."""
    rng = np.random.default_rng(0)
    for label in ("bow", "shrug"):
        for k in range(n):
            folder = root / label / f"s{k % 4:02d}_{k:02d}"
            folder.mkdir(parents=True)
            for t in range(3):
                _openpose_frame(
                    folder / f"c_{t:012d}_keypoints.json", rng.uniform(100, 400, (25, 2))
                )


def _stuck_source(root: Path) -> Path:
    """24 OpenPose folders of 2 classes, and one more whose second frame is a named pipe: reading
    it blocks until the job is stopped, so the job is certainly mid-work when the signal comes.
    Returns the pipe."""
    _openpose_set(root)
    stuck = root / "bow" / "s09_stuck"
    stuck.mkdir()
    _openpose_frame(stuck / "c_000000000000_keypoints.json", STUCK_POSE)
    os.mkfifo(stuck / "c_000000000001_keypoints.json")
    return stuck / "c_000000000001_keypoints.json"


def test_sigint_stops_preprocess_in_one_line_and_the_same_command_resumes(
    tmp_path, ray_session, capsys
):
    src = tmp_path / "src"
    pipe = _stuck_source(src)
    out = tmp_path / "shards"
    argv = _gesture_argv(src, out, "--per-shard", "1", "--folds", "2", "--inner-folds", "2",
                         "--num-cpus", "2")  # fmt: skip
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # a Ray instance of its own
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "distributed.preprocess", *argv], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 100
        while len(list(out.glob(f"*{SUMMARY_SUFFIX}"))) < 24:  # all but the stuck one
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        ray_processes = descendants(proc.pid)  # the job's own Ray and its workers
        assert len(ray_processes) >= 3, ray_processes
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in stdout + stderr, stderr
    assert proc.returncode == 130, stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGINT): "), stderr
    assert "24 of 25 shards" in lines[0] and stopped_in < 20, (lines, stopped_in)
    time.sleep(1)
    assert alive(ray_processes) == []
    shutil.rmtree(ray_tmp, ignore_errors=True)
    # the line names the command that continues, and it resumes shard by shard
    cmd = shlex.split(lines[0].split("continue with: ", 1)[1])
    assert cmd[:3] == ["python", "-m", "distributed.preprocess"] and cmd[3:] == argv
    pipe.unlink()
    _openpose_frame(pipe, STUCK_POSE)
    capsys.readouterr()
    assert preprocess.main(cmd[3:]) == 0
    assert "24 already done, 1 to do" in capsys.readouterr().out


def test_sigterm_stops_preprocess_with_exit_143(tmp_path, ray_session, capsys):
    """In this process (the session's Ray): the same stop on SIGTERM, and the handlers that were
    there before come back."""
    import threading

    src = tmp_path / "src"
    pipe = _stuck_source(src)
    out = tmp_path / "shards"
    before = signal.getsignal(signal.SIGTERM)

    def terminate_when_stuck() -> None:
        deadline = time.monotonic() + 60
        while len(list(out.glob(f"*{SUMMARY_SUFFIX}"))) < 24 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_stuck, daemon=True)
    killer.start()
    code = preprocess.main(_gesture_argv(src, out, "--per-shard", "1", "--folds", "2",
                                         "--inner-folds", "2"))  # fmt: skip
    killer.join()
    io = capsys.readouterr()
    assert code == 143 and "Traceback" not in io.err
    # (this process shares the session's Ray: output its workers printed for earlier tests,
    # "(trial_driver pid=...) ...", may be forwarded here meanwhile; it is not this command's)
    lines = [x for x in io.err.splitlines() if x.strip() and not RAY_WORKER_LINE.match(x)]
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGTERM): 24 of 25 shards"), io.err
    assert signal.getsignal(signal.SIGTERM) is before
    assert ray_session.is_initialized()  # the caller's Ray is the caller's to stop
    pipe.unlink()
