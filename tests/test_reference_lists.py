"""The reference's CK+ trainN / evalN lists checked against a CK+ scan: the real lists on a fake
CK+ tree built from the ids they contain, and deliberately broken copies."""

import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets import protocols
from datasets.records import BadInput, SourceItem
from datasets.reference_lists import CKPLUS_NAME, ckplus_reference_folds, reference_folds
from datasets.sources import CKPLUS_CLASSES, scan_ckplus

pytestmark = pytest.mark.timeout(120)

CKPLUS_FOLDS = Path(
    os.environ.get("CKPLUS_FOLDS", Path(__file__).resolve().parents[2] / "shared/data/ckplus-folds")
)


def _pairs(path):
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def lists():
    if not CKPLUS_FOLDS.is_dir():
        pytest.skip(f"reference CK+ fold lists not found at {CKPLUS_FOLDS} (set CKPLUS_FOLDS)")
    return {p.name: _pairs(p) for p in sorted(CKPLUS_FOLDS.glob("*.txt")) if p.name[0] != "C"}


@pytest.fixture(scope="module")
def ckplus(lists, tmp_path_factory):
    """A CK+ release tree holding exactly the listed sequences (one tiny PNG each, an emotion
    file with the code of the list label), plus one labelled sequence that no list mentions."""
    root = tmp_path_factory.mktemp("ck")
    labels = {i: lab for pairs in lists.values() for i, lab in pairs}
    labels["S000/001"] = "Happy"
    for item_id, label in labels.items():
        subj, seq = item_id.split("/")
        img = root / "cohn-kanade-images" / subj / seq
        img.mkdir(parents=True)
        cv2.imwrite(str(img / f"{subj}_{seq}_00000001.png"), np.zeros((8, 8), np.uint8))
        emo = root / "Emotion" / subj / seq
        emo.mkdir(parents=True)
        code = CKPLUS_CLASSES.index(label) + 1
        (emo / f"{subj}_{seq}_00000001_emotion.txt").write_text(f"   {code:.7e}\n")
    return scan_ckplus(root)


def test_real_lists_become_the_ten_outer_folds(lists, ckplus):
    got = ckplus_reference_folds(ckplus, CKPLUS_FOLDS)
    assert len(got.folds) == 10
    for n, fold in enumerate(got.folds, start=1):
        assert fold.test == tuple(sorted(i for i, _ in lists[f"eval{n}.txt"]))
        assert fold.train == tuple(sorted(i for i, _ in lists[f"train{n}.txt"]))
    assert got.unlisted == ("S000/001",)
    assert sum(len(f.test) for f in got.folds) == 327
    assert ckplus_reference_folds(ckplus.items, CKPLUS_FOLDS) == got


def test_protocol_from_the_real_lists(ckplus):
    items = [it for it in ckplus.items if it.id != "S000/001"]
    t0 = time.perf_counter()
    folds = ckplus_reference_folds(items, CKPLUS_FOLDS).folds
    protocol = protocols.from_lists(folds, items, inner_folds=3, seed=0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"building a CK+-sized protocol took {elapsed:.2f} s"
    assert protocol.name == CKPLUS_NAME == "CK+ 10-fold, reference lists"
    assert "subject-disjoint" in protocol.description
    protocol.validate([it.id for it in items], {it.id: it.subject for it in items})
    assert [f.test for f in protocol.outer] == [f.test for f in folds]


@pytest.fixture
def broken(tmp_path):
    """A writable copy of the real lists."""
    if not CKPLUS_FOLDS.is_dir():
        pytest.skip(f"reference CK+ fold lists not found at {CKPLUS_FOLDS}")
    copy = tmp_path / "lists"
    shutil.copytree(CKPLUS_FOLDS, copy)
    return copy


def _edit_line(path, lineno, new):
    lines = path.read_text().splitlines()
    old = lines[lineno - 1]
    lines[lineno - 1] = new(old)
    path.write_text("\n".join(lines) + "\n")
    return old


def test_label_spelling_is_case_insensitive(broken, ckplus):
    _edit_line(broken / "eval2.txt", 1, lambda s: s.split()[0] + " " + s.split()[1].upper())
    assert ckplus_reference_folds(ckplus, broken) == ckplus_reference_folds(ckplus, CKPLUS_FOLDS)


def test_label_disagreeing_with_the_emotion_file(broken, ckplus):
    old = _edit_line(broken / "eval3.txt", 4, lambda s: s.split()[0] + " Contempt")
    item_id, label = old.split()
    assert label != "Contempt"
    with pytest.raises(BadInput) as info:
        ckplus_reference_folds(ckplus, broken)
    assert info.value.path == str(broken / "eval3.txt")
    assert info.value.reason.startswith(f"line 4: '{item_id}' is 'Contempt' here but '{label}'")


def test_id_missing_from_the_scan(broken, ckplus):
    _edit_line(broken / "train5.txt", 7, lambda s: "S998/001 " + s.split()[1])
    with pytest.raises(BadInput, match="line 7: 'S998/001' is not in the scanned dataset") as info:
        ckplus_reference_folds(ckplus, broken)
    assert info.value.path == str(broken / "train5.txt")


def test_overlapping_lists(broken, ckplus):
    first = (broken / "eval1.txt").read_text().splitlines()[0]
    with open(broken / "train1.txt", "a") as f:
        f.write("\n" + first + "\n")
    n_train1 = len(_pairs(broken / "train1.txt"))
    with pytest.raises(BadInput, match=rf"line 1: '{first.split()[0]}' is also in train1.txt "
                       rf"line {n_train1}") as info:  # fmt: skip
        ckplus_reference_folds(ckplus, broken)
    assert info.value.path == str(broken / "eval1.txt")

    shutil.copy(CKPLUS_FOLDS / "train1.txt", broken / "train1.txt")
    train4 = broken / "train4.txt"  # move it from train4 to eval4: now in two eval lists
    train4.write_text("\n".join(x for x in train4.read_text().splitlines() if x != first))
    with open(broken / "eval4.txt", "a") as f:
        f.write("\n" + first + "\n")
    n_eval4 = len(_pairs(broken / "eval4.txt"))
    with pytest.raises(BadInput, match=rf"line {n_eval4}: '{first.split()[0]}' is also in "
                       r"eval1.txt line 1") as info:  # fmt: skip
        ckplus_reference_folds(ckplus, broken)
    assert info.value.path == str(broken / "eval4.txt")


def test_malformed_and_unknown_lines(broken, ckplus):
    _edit_line(broken / "eval6.txt", 2, lambda s: s + " extra")
    with pytest.raises(BadInput, match="line 2: expected '<id> <label>'"):
        ckplus_reference_folds(ckplus, broken)
    shutil.copy(CKPLUS_FOLDS / "eval6.txt", broken / "eval6.txt")
    _edit_line(broken / "eval6.txt", 3, lambda s: s.split()[0] + " Joy")
    with pytest.raises(BadInput, match=r"line 3: unknown label 'Joy' \(known: Angry, Contempt"):
        ckplus_reference_folds(ckplus, broken)
    shutil.copy(CKPLUS_FOLDS / "eval6.txt", broken / "eval6.txt")
    (broken / "train9.txt").unlink()
    with pytest.raises(BadInput, match="missing reference list"):
        ckplus_reference_folds(ckplus, broken)


def test_reference_folds_generic_lists(tmp_path):
    items = [SourceItem(f"p{i}/clip{j}", f"p{i}", ("walk", "run")[j % 2], "x")
             for i in range(4) for j in range(2)]  # fmt: skip
    for n, test_subject in enumerate(("p0", "p1"), start=1):
        for r in ("train", "eval"):
            chosen = [it for it in items if (it.subject == test_subject) == (r == "eval")]
            lines = [f"{it.id} {it.label.upper()}" for it in chosen]  # "WALK": any case
            (tmp_path / f"{r}{n}.txt").write_text("\n".join(lines))
    got = reference_folds(tmp_path, items, ("walk", "run"))
    assert got.folds[0].test == ("p0/clip0", "p0/clip1")
    assert got.unlisted == ()
    (tmp_path / "eval3.txt").write_text("")
    with pytest.raises(BadInput, match="train3.txt"):
        reference_folds(tmp_path, items, ("walk", "run"))
    with pytest.raises(BadInput, match="does not exist"):
        reference_folds(tmp_path / "none", items, ("walk", "run"))
