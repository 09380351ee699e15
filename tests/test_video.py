"""Decoding videos and image folders: exact round trips, colour order, and every bad input."""

import logging

import cv2
import numpy as np
import pytest

from datasets.faces import HaarDetector, centre_box, crop_square, face_track
from datasets.records import BadInput
from datasets.video import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    decode_frames,
    list_images,
    natural_key,
    read_frames,
)

pytestmark = pytest.mark.timeout(60)


def _smooth_frames(n, h, w, seed=0):
    """Smooth (n, h, w, 3) uint8 RGB frames (JPEG-friendly) that differ per frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0.5, 3.0, 3)
        r = 127 + 100 * np.sin(a * xx * 6 + i * 0.3)
        g = 127 + 100 * np.cos(b * yy * 6 - i * 0.2)
        bl = 127 + 100 * np.sin(c * (xx + yy) * 4)
        out[i] = np.stack([r, g, bl], -1).astype(np.uint8)
    return out


def _write_video(path, frames, fourcc="MJPG", is_color=True):
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (w, h), is_color)
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR) if is_color else f)
    writer.release()
    return path


def _write_folder(folder, frames, names=None, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"frame{i + 1}{ext}" for i in range(len(frames))]
    for name, f in zip(names, frames, strict=True):
        img = f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_RGB2BGR)
        assert cv2.imwrite(str(folder / name), img)
    return folder


def test_extension_lists():
    assert ".mp4" in VIDEO_EXTENSIONS and ".avi" in VIDEO_EXTENSIONS
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp"}


def test_natural_sort_orders_numbers_by_value(tmp_path):
    names = ["img10.png", "img2.png", "img1.png", "img100.png", "img9.png"]
    assert sorted(names, key=natural_key) == [
        "img1.png", "img2.png", "img9.png", "img10.png", "img100.png",
    ]  # fmt: skip
    for n in names + [".hidden1.png", "notes.txt"]:
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == sorted(names, key=natural_key)


def test_png_folder_round_trip_is_exact_and_naturally_ordered(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (12, 61, 97, 3), dtype=np.uint8)
    _write_folder(tmp_path / "seq", frames)  # frame1 .. frame12: lexical order would differ
    out = read_frames(tmp_path / "seq")
    assert out.shape == (12, 61, 97, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, frames)
    np.testing.assert_array_equal(read_frames(tmp_path / "seq", max_frames=5), frames[:5])


def test_grey_folder_becomes_three_equal_channels(tmp_path):
    grey = np.random.default_rng(2).integers(0, 256, (3, 20, 30), dtype=np.uint8)
    _write_folder(tmp_path / "g", grey)
    out = read_frames(tmp_path / "g")
    assert out.shape == (3, 20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_mixed_sizes_in_folder_are_resized_to_the_first(tmp_path, caplog):
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(2)]
    frames.append(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}.png"), f)
    with caplog.at_level(logging.WARNING, logger="datasets.video"):
        out = read_frames(folder)
    assert out.shape == (3, 40, 50, 3)
    expected = cv2.resize(cv2.cvtColor(frames[2], cv2.COLOR_BGR2RGB), (50, 40),
                          interpolation=cv2.INTER_AREA)  # fmt: skip
    np.testing.assert_array_equal(out[2], expected)
    assert "2.png" in caplog.text and "resized" in caplog.text


def test_mjpg_video_round_trip_within_codec_tolerance(tmp_path):
    frames = _smooth_frames(10, 64, 80)
    path = _write_video(tmp_path / "v.avi", frames)
    dec = decode_frames(path)
    assert dec.frames.shape == (10, 64, 80, 3) and dec.declared == 10 and not dec.truncated
    err = np.abs(dec.frames.astype(int) - frames.astype(int))
    assert err.mean() < 4.0, err.mean()
    # frames stay in order: each decoded frame is closest to its own source frame
    dist = np.abs(dec.frames[:, None].astype(int) - frames[None].astype(int)).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(dist.argmin(axis=1), np.arange(10))
    np.testing.assert_array_equal(read_frames(path, max_frames=4), dec.frames[:4])


def test_video_channels_are_rgb(tmp_path):
    red = np.zeros((4, 32, 32, 3), np.uint8)
    red[..., 0] = 220
    out = read_frames(_write_video(tmp_path / "red.mp4", red, "mp4v"))
    assert out[..., 0].mean() > 180 and out[..., 2].mean() < 40


def test_grey_video_has_three_equal_channels(tmp_path):
    grey = _smooth_frames(5, 48, 64)[..., 0]
    out = read_frames(_write_video(tmp_path / "grey.avi", grey, is_color=False))
    assert out.shape == (5, 48, 64, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])
    assert np.abs(out[..., 0].astype(int) - grey).mean() < 4.0


def test_one_frame_video(tmp_path):
    out = read_frames(_write_video(tmp_path / "one.avi", _smooth_frames(1, 32, 48)))
    assert out.shape == (1, 32, 48, 3)


def test_odd_frame_size_video_decodes(tmp_path):
    """97x61: OpenCV's writers round odd sizes down to even; the reader returns what is stored."""
    path = _write_video(tmp_path / "odd.avi", _smooth_frames(6, 61, 97))
    out = read_frames(path)
    cap = cv2.VideoCapture(str(path))
    stored = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
    cap.release()
    assert out.shape == (6, *stored, 3) and abs(stored[0] - 61) <= 1 and abs(stored[1] - 97) <= 1
    track = face_track(out, HaarDetector(), size=32)
    assert track.frames.shape == (6, 32, 32, 3)


def test_single_image_file_is_one_frame(tmp_path):
    img = np.random.default_rng(4).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    np.testing.assert_array_equal(read_frames(tmp_path / "a.png")[0], img[..., ::-1])


# --------------------------------------------------------------------------- bad inputs


def _raises(path, *words):
    with pytest.raises(BadInput) as info:
        read_frames(path)
    assert str(path) in str(info.value)
    for w in words:
        assert w in info.value.reason, info.value.reason
    return info.value


def test_missing_path(tmp_path):
    _raises(tmp_path / "nope.mp4", "does not exist")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    _raises(tmp_path / "empty.mp4", "zero-byte")


def test_text_file_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    _raises(tmp_path / "notes.mp4", "not a video")


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.95])
def test_truncated_avi_returns_the_complete_frames(tmp_path, fraction):
    frames = np.random.default_rng(5).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
    full_path = _write_video(tmp_path / "full.avi", frames)
    full = read_frames(full_path)
    data = full_path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * fraction)])
    dec = decode_frames(cut)
    assert dec.truncated and dec.declared == 12
    assert 1 <= len(dec.frames) < 12
    # no half-decoded frame at the end: every returned frame equals the intact file's frame
    np.testing.assert_array_equal(dec.frames, full[: len(dec.frames)])


def test_truncated_avi_without_a_complete_frame_is_bad_input(tmp_path):
    frames = np.random.default_rng(5).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
    data = _write_video(tmp_path / "full.avi", frames).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.2)])  # header + part of the first frame
    _raises(cut, "truncated")


def test_truncated_mp4_without_index_is_bad_input(tmp_path):
    path = _write_video(tmp_path / "full.mp4", _smooth_frames(8, 48, 64), "mp4v")
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the mp4 index (moov) is written at the end
    _raises(cut, "mp4 container", "truncated")


def test_header_only_avi_is_bad_input(tmp_path):
    path = _write_video(tmp_path / "full.avi", _smooth_frames(4, 48, 64))
    cut = tmp_path / "head.avi"
    cut.write_bytes(path.read_bytes()[:300])
    _raises(cut, "avi")


def test_empty_folder(tmp_path):
    (tmp_path / "seq").mkdir()
    (tmp_path / "seq" / "readme.txt").write_text("no frames here")
    _raises(tmp_path / "seq", "no image files")


def test_corrupt_image_in_folder_is_dropped_and_named(tmp_path):
    """One unreadable frame no longer costs the sequence: it is left out and named; a folder
    where no image reads is bad input naming the folder."""
    from datasets.video import decode_frames

    folder = _write_folder(tmp_path / "seq", _smooth_frames(2, 16, 16))
    (folder / "frame3.png").write_bytes(b"\x89PNG broken")
    got = decode_frames(folder)
    assert len(got.frames) == 2 and got.dropped == ("frame3.png",)
    assert "frame3.png" in got.notes()[0]
    for p in folder.iterdir():
        p.write_bytes(b"\x89PNG broken")
    with pytest.raises(BadInput) as info:
        read_frames(folder)
    assert info.value.path == str(folder)
    assert "none of its 3 images is readable" in info.value.reason


def test_max_frames_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        read_frames(tmp_path, max_frames=0)


def test_video_without_a_face_is_centre_cropped(tmp_path):
    frames = _smooth_frames(8, 60, 100)
    dec = read_frames(_write_video(tmp_path / "noface.avi", frames))
    track = face_track(dec, HaarDetector(), size=40, every=2)
    assert track.centre_cropped and track.face_fraction == 0.0
    assert track.frames.shape == (8, 40, 40, 3)
    # the largest centred square: columns 20..80 of every frame, resized to 40x40
    box = centre_box(60, 100)
    np.testing.assert_array_equal(box, [20.0, 0.0, 60.0, 60.0])
    for i in (0, 7):
        expected = cv2.resize(crop_square(dec[i], box, 0.0), (40, 40), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(track.frames[i], expected)
        np.testing.assert_array_equal(crop_square(dec[i], box, 0.0), dec[i][:, 20:80])
