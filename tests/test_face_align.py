"""Face alignment (``--align``): crops levelled on the eye line of MediaPipe's face detector.

The rotated crop is checked against a slow reference written from its definition (each output
pixel samples the frame at the crop centre plus the output offset turned by the roll angle,
bilinearly); the real-face checks turn a real photograph (matplotlib's Grace Hopper) by known
angles and ask for that angle back and for crops that match the unturned face.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from branches.facial.data import FacialOptions
from datasets import faces

pytestmark = pytest.mark.timeout(120)


def _frame(seed=0, h=90, w=110):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _bilinear(img, x, y):
    """Sample (H, W, 3) ``img`` at real pixel coordinates (x, y); zero outside."""
    x0, y0 = math.floor(x), math.floor(y)
    out = np.zeros(img.shape[2], dtype=np.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(x - xi)) * (1 - abs(y - yi))
            if 0 <= xi < img.shape[1] and 0 <= yi < img.shape[0] and wgt > 0:
                out += wgt * img[yi, xi]
    return out


def _reference_crop(frame, box, margin, roll):
    """Output pixel (u, v) of a side x side crop takes the frame at c + R·((u, v) - m), c the
    crop square's centre, m the output's centre, R = [[cos a, -sin a], [sin a, cos a]] with the
    image's y axis pointing down: a point right of the centre lands above it, so the content
    turns counter-clockwise (as displayed) by ``roll`` = a."""
    x, y, w, h = box
    side = max(int(round(max(w, h) * (1 + 2 * margin))), 1)
    x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    cx, cy = x0 + (side - 1) / 2, y0 + (side - 1) / 2
    m = (side - 1) / 2
    a = math.radians(roll)
    out = np.zeros((side, side, 3), dtype=np.float64)
    for v in range(side):
        for u in range(side):
            du, dv = u - m, v - m
            sx = cx + math.cos(a) * du - math.sin(a) * dv
            sy = cy + math.sin(a) * du + math.cos(a) * dv
            out[v, u] = _bilinear(frame, sx, sy)
    return out


@pytest.mark.parametrize("roll", [7.0, -25.0, 40.0])
@pytest.mark.parametrize("box", [(30, 20, 40, 36), (-10, 50, 45, 45)])  # inside / over the edge
def test_rotated_crop_matches_the_slow_reference(roll, box):
    frame = _frame()
    got = faces.crop_square(frame, np.array(box, float), 0.1, roll=roll).astype(np.float64)
    ref = _reference_crop(frame, box, 0.1, roll)
    assert got.shape == ref.shape
    # OpenCV's bilinear weights are fixed-point (1/32 steps): a few grey levels apart at most
    assert np.abs(got - ref).max() <= 8 and np.abs(got - ref).mean() < 1.0


def test_a_quarter_turn_is_an_exact_rot90_of_the_plain_crop():
    frame, box = _frame(1), np.array([30.0, 20.0, 40.0, 40.0])
    plain = faces.crop_square(frame, box, 0.2)
    assert np.array_equal(faces.crop_square(frame, box, 0.2, roll=90.0), np.rot90(plain, k=1))


def test_align_needs_a_detector_with_eyes():
    with pytest.raises(ValueError, match="--detector mediapipe"):
        FacialOptions(detector="haar", align=True)
    with pytest.raises(ValueError, match="eye landmarks"):
        faces.track_faces_and_roll(np.zeros((2, 64, 64, 3), np.uint8), faces.HaarDetector())


def test_align_with_haar_is_one_line_and_exit_2(tmp_path, capsys):
    from distributed import preprocess

    (tmp_path / "src" / "happy").mkdir(parents=True)
    code = preprocess.main(
        ["facial", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--align"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--detector mediapipe" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_old_files_without_the_option_mean_no_alignment():
    from distributed.evaluate import _normalised

    old = {"size": 48, "detector": "haar", "every": 5, "margin": 0.2, "max_frames": None}
    assert _normalised("facial", old) == _normalised("facial", {**old, "align": False})
    assert _normalised("facial", old) != _normalised("facial", {**old, "detector": "mediapipe",
                                                               "align": True})  # fmt: skip


# ---------------------------------------------------------------- on a real face (MediaPipe)
@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("mediapipe", reason="optional install (make pose)")
    return faces.make_detector("mediapipe")


@pytest.fixture(scope="module")
def hopper():
    import matplotlib.cbook as cbook
    from PIL import Image

    img = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    return cv2.resize(img[60:540, 16:496], (240, 240), interpolation=cv2.INTER_AREA)


def _turned(img, angle):
    """The photograph turned counter-clockwise by ``angle`` degrees about the face's centre,
    with slow drift over 6 frames (a real video moves)."""
    frames = []
    for t in range(6):
        m = cv2.getRotationMatrix2D((118.0, 100.0), angle, 1.0)
        m[:, 2] += (t, -t / 2)
        frames.append(cv2.warpAffine(img, m, (240, 240), borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def _corr(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.corrcoef(a - a.mean(), b - b.mean())[0, 1])


def test_the_roll_of_a_turned_face_is_measured(detector, hopper):
    _, found, base = faces.track_faces_and_roll(_turned(hopper, 0), detector, every=1)
    assert found.all() and np.ptp(base) < 3.0  # her head tilts a little: the reference angle
    for angle in (-20.0, 15.0):
        _, found, rolls = faces.track_faces_and_roll(_turned(hopper, angle), detector, every=1)
        assert found.all()
        # turning the content counter-clockwise lifts the eye on the image's right: roll drops.
        # BlazeFace's eye keypoints are coarse: 4.6-6.5 degrees off at a 20 degree turn here.
        np.testing.assert_allclose(rolls - base.mean(), -angle, atol=7.0)


def test_aligned_crops_of_a_turned_face_match_the_upright_one(detector, hopper):
    upright = faces.face_track(_turned(hopper, 0), detector, 64, every=1, align=True).frames
    for angle in (-20.0, 15.0):
        video = _turned(hopper, angle)
        plain = faces.face_track(video, detector, 64, every=1).frames
        aligned = faces.face_track(video, detector, 64, every=1, align=True).frames
        c_plain, c_aligned = _corr(plain[0], upright[0]), _corr(aligned[0], upright[0])
        print(f"turned {angle:+.0f} deg: correlation with the upright crop {c_plain:.2f} plain, "
              f"{c_aligned:.2f} aligned")  # fmt: skip
        assert c_aligned > 0.7 and c_aligned > c_plain + 0.15
