"""Synthetic facial set: deterministic, decodable, face-detectable, class only in the dynamics."""

import numpy as np
import pytest

from datasets.faces import HaarDetector, crop_faces, face_track, track_faces
from datasets.sources import class_names_for, scan_folders
from datasets.synthetic import FACIAL_CLASSES, main, write_facial_set
from datasets.video import read_frames

pytestmark = pytest.mark.timeout(120)

N_SUBJECTS, PER_CLASS, SIZE, FRAMES = 3, 1, 160, 12


@pytest.fixture(scope="module")
def facial_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    paths = write_facial_set(root, N_SUBJECTS, PER_CLASS, seed=0, size=SIZE, n_frames=FRAMES)
    return root, paths


def _video(root, cls, subject="s01", index=0):
    return read_frames(root / cls / f"{subject}_{index}.avi")


def test_layout_scans_into_subject_independent_items(facial_set):
    root, paths = facial_set
    assert len(paths) == N_SUBJECTS * PER_CLASS * len(FACIAL_CLASSES)
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == sorted(p.name for p in paths)
    items, skipped = scan_folders(root)
    assert skipped == [] and len(items) == len(paths)
    assert class_names_for(items) == FACIAL_CLASSES
    assert {it.subject for it in items} == {"s01", "s02", "s03"}


def test_videos_decode_to_the_expected_shape(facial_set):
    root, paths = facial_set
    for p in paths:
        frames = read_frames(p)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8


def test_offset_is_the_onset_reversed(facial_set):
    root, _ = facial_set
    for subject in ("s01", "s02", "s03"):
        onset, offset = _video(root, "open_mouth", subject), _video(root, "close_mouth", subject)
        # MJPG is intra-only: the decoded frames themselves are reversed, bit for bit
        np.testing.assert_array_equal(offset, onset[::-1])
        assert np.abs(onset[0].astype(int) - onset[-1]).mean() > 3.0  # and they do change


def test_classes_share_the_neutral_face_and_differ_at_the_apex(facial_set):
    root, _ = facial_set
    videos = {c: _video(root, c, "s02").astype(int) for c in ("open_mouth", "raise_brows",
                                                                "narrow_eyes")}  # fmt: skip
    names = list(videos)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(videos[a][0] - videos[b][0]).mean() < 0.5  # same neutral start
            assert np.abs(videos[a][-1] - videos[b][-1]).mean() > 2.0  # different apex


def test_expressions_are_large_after_a_64px_face_crop(facial_set):
    """Crop neutral and apex frames with the same (first frame's) face box: a visible change."""
    root, _ = facial_set
    det = HaarDetector()
    changes = {}
    for cls in ("open_mouth", "raise_brows", "narrow_eyes"):
        for subject in ("s01", "s02", "s03"):
            frames = _video(root, cls, subject)
            boxes, detected = track_faces(frames[[0]], det, every=1)
            assert detected[0]
            crops = crop_faces(frames[[0, -1]], np.repeat(boxes, 2, axis=0), 64).astype(int)
            changes[cls, subject] = np.abs(crops[0] - crops[1]).mean()
    print({k: round(v, 1) for k, v in changes.items()})
    assert min(changes.values()) > 6.0


def test_haar_finds_the_face_in_most_frames(facial_set):
    root, _ = facial_set
    det = HaarDetector()
    fractions = []
    for cls in FACIAL_CLASSES[1:]:  # close_mouth holds the frames of open_mouth
        for subject in ("s01", "s02"):
            track = face_track(_video(root, cls, subject), det, size=48, every=2)
            assert not track.centre_cropped and track.frames.shape == (FRAMES, 48, 48, 3)
            fractions.append(track.face_fraction)
    print(f"face fractions: {np.round(fractions, 2)}")
    assert np.mean(fractions) >= 0.85 and min(fractions) >= 0.5


def test_generator_is_deterministic_for_a_seed(tmp_path):
    a = write_facial_set(tmp_path / "a", 2, 1, seed=5, size=96, n_frames=6)
    b = write_facial_set(tmp_path / "b", 2, 1, seed=5, size=96, n_frames=6)
    c = write_facial_set(tmp_path / "c", 2, 1, seed=6, size=96, n_frames=6)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert any(x.read_bytes() != z.read_bytes() for x, z in zip(a, c, strict=True))
    assert not list((tmp_path / "a").rglob(".*"))  # no temp files left behind


def test_cli_smoke_writes_the_facial_set(tmp_path, capsys):
    main(["facial", "--out", str(tmp_path), "--smoke", "--no-gestures", "--size", "64"])
    files = sorted((tmp_path / "faces").rglob("*.avi"))
    assert len(files) == 2 * len(FACIAL_CLASSES)
    assert read_frames(files[0]).shape == (8, 64, 64, 3)
    assert "wrote 8 files" in capsys.readouterr().out
