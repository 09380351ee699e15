"""Face detection on real photographs, tracking through a plug-in detector, square crops.

Measured with the HaarDetector defaults (min_size_fraction 0.1, scale_factor 1.1,
min_neighbors 4) on scikit-image's lfw_subset upscaled to 128 px: 85/100 faces found and
0/100 non-faces fired on. The thresholds below sit a little under those figures.
"""

import pickle

import cv2
import numpy as np
import pytest

from datasets.faces import (
    FaceDetector,
    HaarDetector,
    NoDetector,
    crop_faces,
    crop_square,
    detection_frames,
    face_track,
    make_detector,
    moving_median,
    track_faces,
)

pytestmark = pytest.mark.timeout(60)

ASTRONAUT_FACE = (177, 66, 95, 95)  # checked by eye: forehead to chin, ear to ear
HOPPER_FACE = (155, 105, 222, 222)


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def _gray(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


@pytest.fixture(scope="module")
def haar():
    return HaarDetector()


def test_haar_implements_the_protocol(haar):
    assert isinstance(haar, FaceDetector) and isinstance(NoDetector(), FaceDetector)
    assert make_detector("haar").name == "haar" and make_detector("none").name == "none"
    with pytest.raises(ValueError, match="unknown face detector"):
        make_detector("mtcnn")


def test_haar_finds_the_astronaut(haar):
    from skimage import data

    boxes = haar.detect(_gray(data.astronaut()))
    assert boxes.shape == (1, 4) and boxes.dtype.kind == "i"
    assert _iou(boxes[0], ASTRONAUT_FACE) > 0.7


def test_haar_finds_grace_hopper(haar):
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    boxes = haar.detect(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    assert len(boxes) == 1 and _iou(boxes[0], HOPPER_FACE) > 0.7


def test_haar_rates_on_lfw_subset(haar):
    from skimage import data

    images = (data.lfw_subset() * 255).round().astype(np.uint8)  # (200, 25, 25): 100 faces first
    found = np.array(
        [
            len(haar.detect(cv2.resize(im, (128, 128), interpolation=cv2.INTER_LINEAR))) > 0
            for im in images
        ]  # fmt: skip
    )
    face_rate, false_rate = found[:100].mean(), found[100:].mean()
    print(f"lfw_subset @128px: faces found {face_rate:.2f}, non-faces fired {false_rate:.2f}")
    assert face_rate >= 0.80
    assert false_rate <= 0.05


def test_haar_pickles_by_parameters(haar):
    from skimage import data

    clone = pickle.loads(pickle.dumps(HaarDetector(0.2, 1.2, 3)))
    assert (clone.min_size_fraction, clone.scale_factor, clone.min_neighbors) == (0.2, 1.2, 3)
    gray = _gray(data.astronaut())
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(haar)).detect(gray), haar.detect(gray))


class ScriptedDetector:
    """A real detector implementing the protocol: it returns the boxes a script gives per frame.

    Frames carry their index in pixel (0, 0) so the detector knows which frame it sees.
    """

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.calls = []

    def detect(self, gray):
        i = int(gray[0, 0])
        self.calls.append(i)
        return np.array(self.script.get(i, []), dtype=np.int64).reshape(-1, 4)


def _indexed_frames(n, h=120, w=160):
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[:, 0, 0, :] = np.arange(n)[:, None]  # grey value = frame index
    return frames


def _interp_reference(n, keys, values):
    """Slow, obvious linear interpolation with holds at the ends."""
    out = np.zeros((n, 4))
    for t in range(n):
        if t <= keys[0]:
            out[t] = values[0]
        elif t >= keys[-1]:
            out[t] = values[-1]
        else:
            j = max(k for k in range(len(keys)) if keys[k] <= t)
            if keys[j] == t:
                out[t] = values[j]
            else:
                f = (t - keys[j]) / (keys[j + 1] - keys[j])
                out[t] = (1 - f) * np.asarray(values[j]) + f * np.asarray(values[j + 1])
    return out


def test_detection_frames_include_the_last():
    np.testing.assert_array_equal(detection_frames(12, 5), [0, 5, 10, 11])
    np.testing.assert_array_equal(detection_frames(11, 5), [0, 5, 10])
    np.testing.assert_array_equal(detection_frames(3, 1), [0, 1, 2])


def test_track_faces_interpolates_misses_and_holds_the_ends():
    # detector runs on 0, 3, 6, 9, 12, 13; it finds faces on 3, 9 and 12 only
    script = {3: [(10, 20, 40, 40)], 9: [(40, 26, 52, 46)], 12: [(46, 20, 40, 40)]}
    det = ScriptedDetector(script)
    boxes, detected = track_faces(_indexed_frames(14), det, every=3, smooth=1)
    assert det.calls == [0, 3, 6, 9, 12, 13]
    np.testing.assert_array_equal(np.flatnonzero(detected), [3, 9, 12])
    expected = _interp_reference(14, [3, 9, 12], [script[3][0], script[9][0], script[12][0]])
    np.testing.assert_allclose(boxes, expected, rtol=0, atol=1e-9)
    assert boxes.shape == (14, 4) and boxes.dtype == np.float64


def test_track_faces_picks_largest_first_then_nearest():
    far_big = (100, 60, 50, 50)
    script = {
        0: [(5, 5, 20, 20), (30, 30, 40, 40)],  # largest wins at the start
        2: [far_big, (34, 30, 40, 40)],  # nearest to the previous wins afterwards
        4: [(38, 32, 40, 40)],
    }
    boxes, _ = track_faces(_indexed_frames(5), ScriptedDetector(script), every=2, smooth=1)
    np.testing.assert_array_equal(boxes[[0, 2, 4]], [[30, 30, 40, 40], [34, 30, 40, 40],
                                                     [38, 32, 40, 40]])  # fmt: skip


def test_moving_median_against_reference_and_outlier_removal():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(9, 4))
    window = 5
    half = window // 2
    ref = np.array(
        [
            np.median([values[min(max(j, 0), 8)] for j in range(i - half, i + half + 1)], axis=0)
            for i in range(9)
        ]  # fmt: skip
    )
    np.testing.assert_allclose(moving_median(values, window), ref)
    # one wild detection among steady ones is removed by the smoothing inside track_faces
    steady, wild = (20, 20, 40, 40), (120, 80, 30, 30)
    script = {i: [steady] for i in range(0, 10, 2)}
    script[4] = [wild]
    boxes, _ = track_faces(_indexed_frames(10), ScriptedDetector(script), every=2, smooth=3)
    np.testing.assert_allclose(boxes, np.tile(steady, (10, 1)))


def test_no_detection_gives_centre_boxes():
    boxes, detected = track_faces(_indexed_frames(4, 60, 100), NoDetector(), every=1)
    assert not detected.any()
    np.testing.assert_array_equal(boxes, np.tile([20.0, 0.0, 60.0, 60.0], (4, 1)))


def _crop_reference(frame, box, margin):
    """Pixel-by-pixel square crop with black outside the image."""
    x, y, w, h = box
    side = max(int(round(max(w, h) * (1 + 2 * margin))), 1)
    x0 = int(round(x + w / 2 - side / 2))
    y0 = int(round(y + h / 2 - side / 2))
    out = np.zeros((side, side, 3), np.uint8)
    for i in range(side):
        for j in range(side):
            yy, xx = y0 + i, x0 + j
            if 0 <= yy < frame.shape[0] and 0 <= xx < frame.shape[1]:
                out[i, j] = frame[yy, xx]
    return out


@pytest.mark.parametrize(
    "box",
    [(30, 20, 40, 40), (-10, -8, 30, 30), (70, 40, 35, 25), (200, 200, 10, 10), (0, 0, 80, 60)],
)
def test_crop_square_matches_reference_with_black_padding(box):
    frame = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_square(frame, np.array(box, float), 0.2),
                                  _crop_reference(frame, box, 0.2))  # fmt: skip


def test_crop_faces_resizes_each_reference_crop():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    boxes = np.array([(30, 20, 40, 40), (-10, -8, 30, 30), (50, 10, 20, 30)], float)
    out = crop_faces(frames, boxes, 24, margin=0.1)
    assert out.shape == (3, 24, 24, 3) and out.dtype == np.uint8
    for i in range(3):
        ref = _crop_reference(frames[i], boxes[i], 0.1)
        interp = cv2.INTER_AREA if ref.shape[0] > 24 else cv2.INTER_LINEAR
        np.testing.assert_array_equal(out[i], cv2.resize(ref, (24, 24), interpolation=interp))


def test_face_track_on_a_moving_astronaut(haar):
    from skimage import data

    img = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    frames = np.stack([np.roll(img, 3 * i, axis=1) for i in range(8)])  # face drifts right
    track = face_track(frames, haar, size=48, every=2)
    assert not track.centre_cropped and track.face_fraction == 1.0
    assert track.frames.shape == (8, 48, 48, 3)
    boxes, _ = track_faces(frames, haar, every=2)
    assert boxes[-1, 0] - boxes[0, 0] == pytest.approx(21, abs=4)
    assert _iou(boxes[0], np.array(ASTRONAUT_FACE) / 2) > 0.6
