"""DFEW, MAFW and FERV39k release layouts: fake trees laid out as the public loaders expect
(file names, headers, label coding), checked for ids, labels, class order, natural frame order,
official folds, skipped entries and errors."""

import cv2
import numpy as np
import pytest

from datasets import protocols
from datasets.layouts import (
    DFEW_CLASSES,
    FERV39K_CLASSES,
    MAFW_CLASSES,
    scan_dfew,
    scan_ferv39k,
    scan_mafw,
)
from datasets.records import BadInput
from datasets.video import read_frames

pytestmark = pytest.mark.timeout(120)


def _frames(folder, names, step=20):
    """Tiny 8x8 frames; frame i (in the given name order) has grey level step * i."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((8, 8, 3), step * i, np.uint8))
    return folder


def _levels(path):
    return [int(round(f.mean())) for f in read_frames(path)]


# --- DFEW ---------------------------------------------------------------------------------------

DFEW_LABELS = {n: (n % 7) + 1 for n in range(1, 11)}  # clip number -> code 1..7


def _dfew_tree(root, spelling="single-labeled", pad=False):
    """Clips 1..10 plus 13 on disk (Clip/clip_224x224/000NN/), 5 official sets: clip n is tested
    in set ((n - 1) % 5) + 1. Set 1 also has broken lines (see the test)."""
    for n in [*DFEW_LABELS, 13]:
        _frames(root / "Clip" / "clip_224x224" / f"{n:05d}", [f"{n:05d}_{j}.jpg" for j in (1, 2)])
    # clip 1: 12 frames named 1.jpg..12.jpg, written in shuffled order; level = 20 * number
    clip1 = root / "Clip" / "clip_224x224" / "00001"
    for p in clip1.iterdir():
        p.unlink()
    for j in np.random.default_rng(0).permutation(np.arange(1, 13)):
        cv2.imwrite(str(clip1 / f"{j}.jpg"), np.full((8, 8, 3), 20 * j, np.uint8))
    name = (lambda n: f"{n:05d}") if pad else str
    for k in range(1, 6):
        for role in ("train", "test"):
            folder = root / "EmoLabel_DataSplit" / f"{role}({spelling})"
            folder.mkdir(parents=True, exist_ok=True)
            rows = [
                f"{name(n)},{code}"
                for n, code in DFEW_LABELS.items()
                if ((n - 1) % 5 + 1 == k) == (role == "test")
            ]
            if k == 1 and role == "train":
                # lines 10..13: unreadable, missing on disk, unknown code, duplicate of line 2
                rows += ["abc,3", f"{name(11)},2", f"{name(12)},9", f"{name(2)},3"]
            if k == 1 and role == "test":
                rows.append(f"{name(13)},1")  # on disk, but listed in set 1 only
            if k > 1 and role == "train":
                rows.append(f"{name(11)},2")
            (folder / f"set_{k}.csv").write_text("video_name,label\n" + "\n".join(rows) + "\n")
    return root


def test_scan_dfew_ids_labels_folds_and_skipped(tmp_path):
    root = _dfew_tree(tmp_path / "DFEW")
    scan = scan_dfew(root)
    assert scan.classes == DFEW_CLASSES == (
        "Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear",
    )  # fmt: skip
    assert scan.name == "DFEW 5-fold official"
    assert [it.id for it in scan.items] == [str(n) for n in range(1, 11)]
    for it in scan.items:
        n = int(it.id)
        assert it.label == DFEW_CLASSES[DFEW_LABELS[n] - 1] and it.subject == ""
        assert it.path == str(root / "Clip" / "clip_224x224" / f"{n:05d}")
    assert _levels(scan.items[0].path) == [20 * j for j in range(1, 13)]  # 2.jpg before 10.jpg
    assert len(scan.folds) == 5
    for k, fold in enumerate(scan.folds, start=1):
        test = sorted(str(n) for n in DFEW_LABELS if (n - 1) % 5 + 1 == k)
        assert fold.test == tuple(test)
        assert fold.train == tuple(sorted(set(map(str, DFEW_LABELS)) - set(test)))
    reasons = [s.reason for s in scan.skipped]
    train1 = "EmoLabel_DataSplit/train(single-labeled)/set_1.csv"
    assert f"{train1} line 10: unreadable line 'abc,3'" in reasons
    missing = [s for s in scan.skipped if "'11'" in s.reason]
    assert [s.reason for s in missing] == [f"{train1} line 11: '11' missing on disk (no such "
                                           "frame folder)"]  # fmt: skip
    assert missing[0].path == str(root / "Clip" / "clip_224x224" / "00011")
    assert f"{train1} line 12: unknown label '9' (expected 1..7)" in reasons
    assert f"{train1} line 13: duplicate of {train1} line 2" in reasons
    only = [r for r in reasons if "'13'" in r]
    assert only == ["EmoLabel_DataSplit/test(single-labeled)/set_1.csv line 4: '13' is not in "
                    "set(s) 2, 3, 4, 5"]  # fmt: skip
    assert len(scan.skipped) == 5

    # 8 training clips over 7 classes cannot fill class-stratified inner folds: the official
    # sets are still written, stratified where possible, and the protocol says where not
    protocol = protocols.official(scan.folds, scan.items, inner_folds=2, name=scan.name)
    protocol.validate([it.id for it in scan.items])
    assert protocol.warnings[0] == (
        "DFEW 5-fold official: outer fold 0: inner splits stratified where possible: class(es) "
        "'Disgust' (1), 'Happy' (1), 'Sad' (1), 'Surprise' (1) have "
        "fewer training items than the 2 inner splits, so some validation splits lack them"
    )
    assert "stratified where possible" in protocol.description


def test_scan_dfew_padded_ids_underscore_spelling_and_videos(tmp_path):
    root = _dfew_tree(tmp_path / "DFEW", spelling="single_labeled", pad=True)
    frames = scan_dfew(root)
    assert [it.id for it in frames.items] == [f"{n:05d}" for n in range(1, 11)]
    for n in [*DFEW_LABELS, 13]:  # the release ships the videos in zip parts: any sub-folder
        part = root / "Clip" / "original" / f"part_{n % 3}"
        part.mkdir(parents=True, exist_ok=True)
        (part / f"{n:05d}.mp4").write_bytes(b"video")
    videos = scan_dfew(root, source="video")
    assert [it.id for it in videos.items] == [it.id for it in frames.items]
    assert videos.items[0].path == str(root / "Clip" / "original" / "part_1" / "00001.mp4")
    assert videos.folds == frames.folds
    import shutil

    shutil.rmtree(root / "Clip" / "clip_224x224")
    assert scan_dfew(root).items == videos.items  # auto: videos when there are no frames
    with pytest.raises(ValueError, match="source must be one of"):
        scan_dfew(root, source="clips")


def _rewrite(path, old, new):
    path.write_text(path.read_text().replace(old, new))


def test_scan_dfew_errors(tmp_path):
    root = _dfew_tree(tmp_path / "DFEW")
    split = root / "EmoLabel_DataSplit"
    train2, test2 = split / "train(single-labeled)" / "set_2.csv", split / "test(single-labeled)"
    original = train2.read_text()
    train2.write_text(original + "2,3\n")  # clip 2 is in test of set 2 as well
    with pytest.raises(BadInput, match=r"set 2: 1 id\(s\) in both train and test, e.g. '2' at "
                       r"EmoLabel_DataSplit/train\(single-labeled\)/set_2.csv line \d+ and "
                       r"EmoLabel_DataSplit/test\(single-labeled\)/set_2.csv line 2"):  # fmt: skip
        scan_dfew(root)
    train2.write_text(original.replace("\n3,4\n", "\n3,5\n"))  # clip 3: Angry in set 1, here 5
    with pytest.raises(BadInput, match=r"set_2.csv line \d+: '3' is labelled 'Surprise', but "
                       r"'Angry' at .*set_1.csv line \d+"):  # fmt: skip
        scan_dfew(root)
    train2.write_text("name,emotion\n1,2\n")
    with pytest.raises(BadInput, match="line 1: expected the header 'video_name,label'") as info:
        scan_dfew(root)
    assert info.value.path == str(train2)
    train2.unlink()
    with pytest.raises(BadInput, match="split file missing") as info:
        scan_dfew(root)
    assert info.value.path.endswith("train(single-labeled)/set_2.csv")
    assert test2.is_dir()
    with pytest.raises(BadInput, match="missing"):
        scan_dfew(tmp_path / "nowhere")


# --- MAFW ---------------------------------------------------------------------------------------

MAFW_LABELS = {f"{n:05d}": MAFW_CLASSES[n % 11] for n in range(1, 16)}


def _mafw_tree(root, clips=False):
    """Clips 00001..00015 as data/frames/<clip>/<n>.png (or data/clips/<clip>.mp4); clip n is
    tested in set ((n - 1) % 5) + 1; set 3 train has broken lines (see the test)."""
    for clip in MAFW_LABELS:
        if clips:
            (root / "data" / "clips").mkdir(parents=True, exist_ok=True)
            (root / "data" / "clips" / f"{clip}.mp4").write_bytes(b"video")
        else:
            _frames(root / "data" / "frames" / clip, [f"{j}.png" for j in range(1, 11)])
    split = root / "Train & Test Set" / "single" / "no_caption"
    for k in range(1, 6):
        (split / f"set_{k}").mkdir(parents=True)
        for role in ("train", "test"):
            lines = [
                f"{clip}.mp4 {label.upper() if clip == '00004' else label}"
                for clip, label in MAFW_LABELS.items()
                if ((int(clip) - 1) % 5 + 1 == k) == (role == "test")
            ]
            if k == 3 and role == "train":
                lines += ["00016.mp4", "00017.mp4 angry", "00018.mp4 fear", "00019.mp4 fear"]
            if k == 4 and role == "test":
                lines.append("00019.mp4 fear")  # not on disk either
            (split / f"set_{k}" / f"{role}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_scan_mafw(tmp_path):
    root = _mafw_tree(tmp_path / "MAFW")
    scan = scan_mafw(root)
    assert scan.classes == MAFW_CLASSES == (
        "anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
        "contempt", "anxiety", "helplessness", "disappointment",
    )  # fmt: skip
    assert scan.name == "MAFW 5-fold official"
    assert [(it.id, it.label) for it in scan.items] == list(MAFW_LABELS.items())  # 00004 upper
    assert scan.items[0].path == str(root / "data" / "frames" / "00001")
    assert _levels(scan.items[9].path) == [20 * i for i in range(10)]  # 1.png .. 10.png
    for k, fold in enumerate(scan.folds, start=1):
        test = {c for c in MAFW_LABELS if (int(c) - 1) % 5 + 1 == k}
        assert fold.test == tuple(sorted(test))
        assert fold.train == tuple(sorted(MAFW_LABELS.keys() - test))
    train3 = "Train & Test Set/single/no_caption/set_3/train.txt"
    reasons = sorted(s.reason for s in scan.skipped)
    assert reasons == [
        f"{train3} line 13: unreadable line '00016.mp4'",
        f"{train3} line 14: unknown label 'angry'",
        f"{train3} line 15: '00018' missing on disk (no such frame folder)",
        f"{train3} line 16: '00019' missing on disk (no such frame folder)",
    ]
    assert len(scan.folds) == 5


def test_scan_mafw_clips_and_errors(tmp_path):
    root = _mafw_tree(tmp_path / "MAFW", clips=True)
    scan = scan_mafw(root)
    assert scan.items[2].path == str(root / "data" / "clips" / "00003.mp4")
    with pytest.raises(BadInput, match="missing"):
        scan_mafw(root, source="frames")
    test1 = root / "Train & Test Set" / "single" / "no_caption" / "set_1" / "test.txt"
    test1.write_text(test1.read_text() + "00002.mp4 fear\n")  # 00002 is in train of set 1
    with pytest.raises(BadInput, match=r"set 1: 1 id\(s\) in both train and test, e.g. '00002'"):
        scan_mafw(root)
    test1.unlink()
    with pytest.raises(BadInput, match="split file") as info:
        scan_mafw(root)
    assert info.value.path == str(test1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="not a MAFW release"):
        scan_mafw(tmp_path / "empty")


# --- FERV39k ------------------------------------------------------------------------------------

FERV_CLIPS = [
    f"{scene}/{cls}/{n:04d}"
    for scene in ("Action", "Argue")
    for cls in ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
    for n in (0, 15)
]


def _ferv_tree(root, nested=False):
    """Every FERV_CLIPS clip on disk; clips numbered 0015 are the test set."""
    clips = root / "2_ClipsforFaceCrop"
    if nested:
        clips = clips / "2_ClipsforFaceCrop"
    for clip in FERV_CLIPS:
        _frames(clips / clip, [f"{j}.jpg" for j in range(1, 11)])
    setups = root / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    for role in ("train", "test"):
        lines = [
            f"{c} {c.split('/')[1]}" for c in FERV_CLIPS if c.endswith("15") == (role == "test")
        ]
        if role == "train":
            lines += ["Action/Happy/0099 Happy", "Action/Sad/0001 Happy", "Action/Happy/0002 Joy",
                      "Action/0003 Happy", "../x/0004 Happy"]  # fmt: skip
        (setups / f"{role}_All.csv").write_text("\n".join(lines) + "\n")
    return root


def test_scan_ferv39k(tmp_path):
    root = _ferv_tree(tmp_path / "FERV39k")
    scan = scan_ferv39k(root)
    assert scan.classes == FERV39K_CLASSES == (
        "Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear",
    )  # fmt: skip
    assert scan.name == "FERV39k official train/test"
    assert sorted(it.id for it in scan.items) == sorted(FERV_CLIPS)
    for it in scan.items:
        assert it.label == it.id.split("/")[1] and it.subject == ""
        assert it.path == str(root / "2_ClipsforFaceCrop" / it.id)
    assert _levels(scan.items[0].path) == [20 * i for i in range(10)]
    (fold,) = scan.folds
    assert fold.test == tuple(sorted(c for c in FERV_CLIPS if c.endswith("0015")))
    assert fold.train == tuple(sorted(c for c in FERV_CLIPS if c.endswith("0000")))
    first = 14 + 1  # 14 train clips, then the broken lines
    reasons = [s.reason for s in scan.skipped]
    where = "4_setups/All_scenes/train_All.csv line"
    assert reasons == [
        f"{where} {first + 1}: label 'Happy' disagrees with the clip's class folder 'Sad'",
        f"{where} {first + 2}: unknown label 'Joy'",
        f"{where} {first + 3}: unreadable line 'Action/0003 Happy'",
        f"{where} {first + 4}: unreadable line '../x/0004 Happy'",
        f"{where} {first}: 'Action/Happy/0099' missing on disk (no such frame folder)",
    ]
    protocol = protocols.official(scan.folds, scan.items, inner_folds=2, name=scan.name)
    protocol.validate([it.id for it in scan.items])


def test_scan_ferv39k_nested_folder_and_errors(tmp_path):
    root = _ferv_tree(tmp_path / "FERV39k", nested=True)
    scan = scan_ferv39k(root)
    assert scan.items[0].path.startswith(str(root / "2_ClipsforFaceCrop" / "2_ClipsforFaceCrop"))
    test = root / "4_setups" / "All_scenes" / "test_All.csv"
    test.write_text(test.read_text() + "Argue/Fear/0000 Fear\n")
    overlap = (r"e.g. 'Argue/Fear/0000' at 4_setups/All_scenes/train_All.csv line \d+ and "
               r"4_setups/All_scenes/test_All.csv line 15")  # fmt: skip
    with pytest.raises(BadInput, match=overlap):
        scan_ferv39k(root)
    test.write_text("Action/Happy/0099 Happy\n")
    (root / "4_setups" / "All_scenes" / "train_All.csv").write_text("nothing here\n")
    with pytest.raises(BadInput, match=r"no usable item \(2 skipped; first: 4_setups"):
        scan_ferv39k(root)
