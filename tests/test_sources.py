"""Scanning source folders (CK+, label lists, folder per label): nothing dropped silently."""

import cv2
import numpy as np
import pytest

from datasets.records import BadInput, SourceItem
from datasets.sources import (
    CKPLUS_CLASSES,
    class_names_for,
    scan_ckplus,
    scan_folders,
    scan_list,
)

pytestmark = pytest.mark.timeout(60)


def _frames(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{folder.parent.name}_{folder.name}_{i + 1:08d}.png"),
                    np.full((8, 8), 10 * i, np.uint8))  # fmt: skip
    return folder


def _make_ckplus(root):
    """S005/001 (Disgust), S010/002 (unlabelled), S010/004 (Angry), S022/001 (code 0), S022/003
    (Surprise), S022/005 (no images, labelled)."""
    imgs, emo = root / "cohn-kanade-images", root / "Emotion"
    labels = {("S005", "001"): "   3.0000000e+00\n", ("S010", "004"): "   1.0000000e+00",
              ("S022", "001"): "   0.0000000e+00", ("S022", "003"): "7.0000000e+00   \n",
              ("S022", "005"): "5"}  # fmt: skip
    for subj, seq in [("S005", "001"), ("S010", "002"), ("S010", "004"), ("S022", "001"),
                      ("S022", "003")]:  # fmt: skip
        _frames(imgs / subj / seq, 3)
    (imgs / "S022" / "005").mkdir()
    for (subj, seq), text in labels.items():
        (emo / subj / seq).mkdir(parents=True)
        (emo / subj / seq / f"{subj}_{seq}_00000010_emotion.txt").write_text(text)
    (imgs / ".DS_Store").write_bytes(b"")
    return root


def test_scan_ckplus(tmp_path):
    items, skipped = scan_ckplus(_make_ckplus(tmp_path / "ck"))
    root = tmp_path / "ck" / "cohn-kanade-images"
    assert items == [
        SourceItem("S005/001", "S005", "Disgust", str(root / "S005" / "001")),
        SourceItem("S010/004", "S010", "Angry", str(root / "S010" / "004")),
        SourceItem("S022/003", "S022", "Surprise", str(root / "S022" / "003")),
    ]
    reasons = {p.split("ck/")[-1]: r for p, r in skipped}
    assert len(skipped) == 3, skipped
    assert "unlabelled" in reasons["cohn-kanade-images/S010/002"]
    assert "holds no images" in reasons["cohn-kanade-images/S022/005"]
    assert "not one of 1..7" in reasons["Emotion/S022/001/S022_001_00000010_emotion.txt"]
    assert class_names_for(items) == ("Angry", "Disgust", "Surprise")


def test_ckplus_class_names_follow_the_reference_order():
    assert CKPLUS_CLASSES == ("Angry", "Contempt", "Disgust", "Fear", "Happy", "Sad", "Surprise")
    items = [SourceItem(str(i), "S", c, "p") for i, c in enumerate(reversed(CKPLUS_CLASSES))]
    assert class_names_for(items) == CKPLUS_CLASSES
    other = [SourceItem("a", "s", "walk", "p"), SourceItem("b", "s", "Angry", "p")]
    assert class_names_for(other) == ("Angry", "walk")
    assert class_names_for(other, preferred=["walk", "run", "Angry"]) == ("walk", "Angry")
    with pytest.raises(ValueError, match="walk"):
        class_names_for(other, preferred=["Angry"])


@pytest.fixture
def list_source(tmp_path):
    root = tmp_path / "src"
    _frames(root / "S010" / "004")
    _frames(root / "S011" / "001")
    (root / "S012").mkdir()
    (root / "S012" / "002.avi").write_bytes(b"video")
    (root / "S013").mkdir()
    (root / "S013" / "001.avi").write_bytes(b"video")
    (root / "S013" / "001.mp4").write_bytes(b"video")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.avi").write_bytes(b"video")
    return root


def test_scan_list_resolves_folders_and_files(list_source, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text(
        "# comment\n"
        "S010/004 Angry\n"
        "\n"
        "S012/002 Happy\n"  # extension omitted -> S012/002.avi
        "S011/001/ Sad\n"  # trailing slash: same id as S011/001
        "S012/002.avi Angry\n"  # duplicate of line 4 once the extension is dropped
        "../outside/x Happy\n"
        "../../x Happy\n"
        "/etc/passwd Happy\n"
        "S099/001 Happy\n"
        "S010/004 Fear\n"
        "S013/001 Happy\n"  # .avi and .mp4 both exist
        "S011/001 Happyy\n"
        "just-one-field\n"
    )
    items, skipped = scan_list(list_source, labels, class_names=CKPLUS_CLASSES)
    assert items == [
        SourceItem("S010/004", "S010", "Angry", str(list_source / "S010/004")),
        SourceItem("S012/002", "S012", "Happy", str(list_source / "S012/002.avi")),
        SourceItem("S011/001", "S011", "Sad", str(list_source / "S011/001")),
    ]
    by_line = {int(r.split("line ")[1].split(":")[0]): (p, r) for p, r in skipped if "line " in r}
    assert "duplicate id 'S012/002' (kept line 4)" in by_line[6][1]
    assert by_line[6][0].endswith("S012/002.avi")
    for line in (7, 8, 9):
        assert "leaves the source folder" in by_line[line][1]
    assert by_line[8][0] == "../../x" and by_line[9][0] == "/etc/passwd"
    assert "not found" in by_line[10][1] and by_line[10][0].endswith("S099/001")
    assert "duplicate id 'S010/004' (kept line 2)" in by_line[11][1]
    assert "ambiguous" in by_line[12][1] and "001.avi" in by_line[12][1]
    assert "unknown label 'Happyy'" in by_line[13][1] and by_line[13][0].endswith("S011/001")
    malformed = [s for s in skipped if "labels.txt:14" in s.path]
    assert len(malformed) == 1 and "expected '<path> <label>'" in malformed[0].reason
    assert len(skipped) == 9


def test_scan_list_subject_pattern_and_all_labels_accepted(list_source, tmp_path):
    labels = tmp_path / "l.txt"
    labels.write_text("S010/004 Whatever\nS012/002 Other\n")
    items, skipped = scan_list(list_source, labels, subject_pattern=r"^S(\d+)")
    assert [(it.subject, it.label) for it in items] == [("010", "Whatever"), ("012", "Other")]
    assert skipped == []


def test_scan_list_errors(list_source, tmp_path):
    with pytest.raises(BadInput, match="label list does not exist"):
        scan_list(list_source, tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("S099/001 Angry\n")
    with pytest.raises(BadInput, match=r"no usable item \(1 skipped; first: .*S099/001"):
        scan_list(list_source, bad)


def _make_folders(root):
    for label, names in {"happy": ["alice_01.avi", "alice_02.mp4", "bob_1.avi", "carol.avi"],
                         "sad": ["bob_3.AVI", "notes.txt", "dave_seq"]}.items():  # fmt: skip
        (root / label).mkdir(parents=True)
        for name in names:
            if name.endswith("seq"):
                _frames(root / label / name)
            else:
                (root / label / name).write_bytes(b"x")
    (root / "sad" / "empty_seq").mkdir()
    (root / "sad" / "alice_01.mkv").write_bytes(b"x")
    (root / "happy" / "alice_01.mkv").write_bytes(b"x")  # same id as alice_01.avi
    (root / "stray.avi").write_bytes(b"x")
    (root / "angry").mkdir()
    return root


def test_scan_folders(tmp_path):
    root = _make_folders(tmp_path / "src")
    items, skipped = scan_folders(root)
    got = [(it.id, it.subject, it.label, it.path.split("src/")[-1]) for it in items]
    assert got == [
        ("happy/alice_01", "alice", "happy", "happy/alice_01.avi"),
        ("happy/alice_02", "alice", "happy", "happy/alice_02.mp4"),
        ("happy/bob_1", "bob", "happy", "happy/bob_1.avi"),
        ("happy/carol", "carol", "happy", "happy/carol.avi"),  # no "_": its own subject
        ("sad/alice_01", "alice", "sad", "sad/alice_01.mkv"),
        ("sad/bob_3", "bob", "sad", "sad/bob_3.AVI"),
        ("sad/dave_seq", "dave", "sad", "sad/dave_seq"),
    ]
    reasons = {p.split("src/")[-1]: r for p, r in skipped}
    assert reasons == {
        "angry": "label folder is empty",
        "happy/alice_01.mkv": "duplicate id 'happy/alice_01' (kept "
        + str(root / "happy" / "alice_01.avi")
        + ")",
        "sad/empty_seq": "folder holds no frame or data files",
        "sad/notes.txt": reasons["sad/notes.txt"],
        "stray.avi": "file outside a label folder",
    }
    assert reasons["sad/notes.txt"].startswith("unsupported file type")


def test_scan_folders_custom_subject_pattern_and_extensions(tmp_path):
    root = _make_folders(tmp_path / "src")
    items, _ = scan_folders(root, extensions=(".avi",), subject_pattern=r"_(\d+)$")
    assert {it.id: it.subject for it in items} == {
        "happy/alice_01": "01", "happy/bob_1": "1", "happy/carol": "carol",
        "sad/bob_3": "3", "sad/dave_seq": "dave_seq",
    }  # fmt: skip


def test_empty_or_missing_source_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for scan in (scan_folders, scan_ckplus, lambda r: scan_list(r, tmp_path / "x.txt")):
        with pytest.raises(BadInput, match="source folder is empty") as info:
            scan(tmp_path / "empty")
        assert info.value.path == str(tmp_path / "empty")
    with pytest.raises(BadInput, match="does not exist"):
        scan_folders(tmp_path / "missing")
    (tmp_path / "only_hidden").mkdir()
    (tmp_path / "only_hidden" / ".DS_Store").write_bytes(b"")
    with pytest.raises(BadInput, match="empty"):
        scan_folders(tmp_path / "only_hidden")
    (tmp_path / "junk" / "happy").mkdir(parents=True)
    (tmp_path / "junk" / "happy" / "a.txt").write_text("x")
    with pytest.raises(BadInput, match="no usable item"):
        scan_folders(tmp_path / "junk")
    with pytest.raises(BadInput, match="not a CK\\+ release"):
        scan_ckplus(tmp_path / "junk")
