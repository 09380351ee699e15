"""Folds as their own step: the paper's CK+ lists end to end, official DFEW sets through the
preprocessing job, a two-video folder, several protocols side by side, and the refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.manifest import list_protocols, read_manifest, read_protocol
from distributed import folds as folds_cli
from distributed import preprocess
from tests.conftest import stored_protocol
from tests.test_reference_lists import CKPLUS_FOLDS, _pairs

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]


def _tiny_ckplus(root: Path, labels: dict[str, str]) -> Path:
    from datasets.sources import CKPLUS_CLASSES

    for item_id, label in labels.items():
        subj, seq = item_id.split("/")
        img = root / "cohn-kanade-images" / subj / seq
        img.mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(img / f"{subj}_{seq}_{k:08d}.png"), np.full((8, 8), 40 * k, np.uint8))
        emo = root / "Emotion" / subj / seq
        emo.mkdir(parents=True)
        code = CKPLUS_CLASSES.index(label) + 1
        (emo / f"{subj}_{seq}_00000001_emotion.txt").write_text(f"   {code:.7e}\n")
    return root


@pytest.fixture(scope="module")
def ckplus_shards(tmp_path_factory, ray_session):
    if not CKPLUS_FOLDS.is_dir():
        pytest.skip(f"reference CK+ fold lists not found at {CKPLUS_FOLDS}")
    labels = {i: lab for p in sorted(CKPLUS_FOLDS.glob("*.txt")) if p.name[0] != "C"
              for i, lab in _pairs(p)}  # fmt: skip
    root = tmp_path_factory.mktemp("ckplus")
    src = _tiny_ckplus(root / "CK+", labels)
    out = root / "shards"
    argv = ["facial", "--source", str(src), "--layout", "ckplus", "--fold-lists",
            str(CKPLUS_FOLDS), "--out", str(out), "--detector", "none", "--size", "8",
            "--per-shard", "64"]  # fmt: skip
    assert preprocess.main(argv) == 0
    return out


def test_ckplus_preprocessing_gives_exactly_the_ten_listed_folds(ckplus_shards):
    manifest = read_manifest(str(ckplus_shards))
    assert manifest.protocol == "lists" and manifest.counts.written == 327
    key, protocol = read_protocol(str(ckplus_shards), manifest)
    assert protocol.name == "CK+ 10-fold, reference lists" and len(protocol.outer) == 10
    for n, fold in enumerate(protocol.outer, start=1):
        assert list(fold.test) == sorted(i for i, _ in _pairs(CKPLUS_FOLDS / f"eval{n}.txt"))
        assert list(fold.train) == sorted(i for i, _ in _pairs(CKPLUS_FOLDS / f"train{n}.txt"))
        subj = lambda ids: {i.split("/")[0] for i in ids}  # noqa: E731
        for split in fold.inner:  # inner validation is subject-disjoint, inside trainN only
            assert not subj(split.train) & subj(split.val)
            assert set(split.train) | set(split.val) == set(fold.train)


def test_folds_cli_rewrites_protocols_side_by_side_in_seconds(ckplus_shards, tmp_path, capsys):
    shards = tmp_path / "s"
    shutil.copytree(ckplus_shards, shards)
    parquet = {p: p.stat().st_mtime_ns for p in shards.glob("*.parquet")}
    t0 = time.perf_counter()
    assert folds_cli.main([str(shards), "--protocol", "subjects", "--folds", "10"]) == 0
    seconds = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "subject-independent 10x3-fold: 10 outer folds" in out, out
    assert list_protocols(str(shards)) == ["lists", "subjects"]
    assert read_manifest(str(shards)).protocol == "lists"  # the default stays preprocessing's
    assert {p: p.stat().st_mtime_ns for p in shards.glob("*.parquet")} == parquet  # untouched
    assert stored_protocol(shards)["outer"][0]["test"]
    with capsys.disabled():  # shown with -s: the figure README quotes
        print(f"\ndistributed.folds on the CK+-sized tree: {seconds:.2f} s ({out.strip()})")
    # a list that disagrees with the shards is refused with the file and line
    bad = tmp_path / "lists"
    shutil.copytree(CKPLUS_FOLDS, bad)
    text = (bad / "eval3.txt").read_text().splitlines()
    sid, label = text[0].split()
    other = "Happy" if label != "Happy" else "Sad"
    (bad / "eval3.txt").write_text("\n".join([f"{sid} {other}", *text[1:]]) + "\n")
    assert folds_cli.main([str(shards), "--protocol", "lists", "--fold-lists", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "eval3.txt" in err and "line 1" in err and err.count("\n") == 1, err


def _dfew_release(root: Path, per_class: int = 5) -> Path:
    """A DFEW-shaped tree: 7 classes x ``per_class`` clips of 3 frames (Clip/clip_224x224/NNNNN/),
    5 official sets, clip n tested in set (n - 1) % 5 + 1."""
    n_clips = 7 * per_class
    for n in range(1, n_clips + 1):
        folder = root / "Clip" / "clip_224x224" / f"{n:05d}"
        folder.mkdir(parents=True)
        for j in (1, 2, 10):
            cv2.imwrite(str(folder / f"{j}.jpg"), np.full((16, 16, 3), 10 * j + n, np.uint8))
    for k in range(1, 6):
        for role in ("train", "test"):
            folder = root / "EmoLabel_DataSplit" / f"{role}(single-labeled)"
            folder.mkdir(parents=True, exist_ok=True)
            rows = [f"{n},{(n - 1) % 7 + 1}" for n in range(1, n_clips + 1)
                    if ((n - 1) % 5 + 1 == k) == (role == "test")]  # fmt: skip
            (folder / f"set_{k}.csv").write_text("video_name,label\n" + "\n".join(rows) + "\n")
    return root


def test_dfew_layout_preprocesses_with_the_official_sets(tmp_path, ray_session, capsys):
    src = _dfew_release(tmp_path / "DFEW")
    out = tmp_path / "shards"
    argv = ["facial", "--source", str(src), "--layout", "dfew", "--out", str(out),
            "--detector", "none", "--size", "16", "--inner-folds", "2"]  # fmt: skip
    assert preprocess.main(argv) == 0
    printed = capsys.readouterr().out
    assert "DFEW 5-fold official" in printed
    manifest = read_manifest(str(out))
    assert manifest.protocol == "dfew"
    assert manifest.classes == ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
    _, protocol = read_protocol(str(out), manifest)
    for k, fold in enumerate(protocol.outer, start=1):
        assert set(fold.test) == {str(n) for n in range(1, 36) if (n - 1) % 5 + 1 == k}
    assert "class-stratified" in protocol.description  # DFEW names no subjects


def test_two_videos_preprocess_and_training_says_how_to_get_folds(tmp_path, ray_session, capsys):
    from datasets.synthetic import write_facial_set

    raw = tmp_path / "raw"
    write_facial_set(raw, n_subjects=1, per_class=1, seed=0, size=64, n_frames=6)
    for label in sorted(p.name for p in raw.iterdir())[2:]:
        shutil.rmtree(raw / label)  # two videos of two classes, one subject
    out = tmp_path / "one"
    assert preprocess.main(["facial", "--source", str(raw), "--out", str(out), "--size", "32"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("no folds written"))
    assert "distributed.folds" in line and "subjects" in line
    manifest = read_manifest(str(out))
    assert manifest.counts.written == 2 and manifest.protocol is None
    # training refuses, in one line, with the same hint; no Ray work is started for it
    from distributed import train

    assert train.main(["facial", "--shards", str(out), "--fold", "0", "--smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "distributed.folds" in err and "\n" not in err
    # and the folds step says why the data cannot fill a protocol
    assert folds_cli.main([str(out), "--protocol", "subjects"]) == 2
    assert "cannot build 5x3 subject folds" in capsys.readouterr().err


def test_folds_cli_help_and_list(tmp_path):
    done = subprocess.run([sys.executable, "-m", "distributed.folds", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "--protocol" in done.stdout and "dfew" in done.stdout
    assert "ray" not in json.dumps(done.stderr).lower() or done.stderr == ""
