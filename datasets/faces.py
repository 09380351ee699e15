"""Face detection, tracking and square face crops for the facial branch.

A detector is anything with a ``name`` and ``detect(gray) -> (m, 4)`` boxes (x, y, w, h); the Haar
cascade bundled with OpenCV is the default (no download); ``MediaPipeFaceDetector`` (BlazeFace) is
the optional alternative when MediaPipe is installed (``make pose``). ``track_faces`` detects on
every ``every``-th frame (and the last), keeps the largest face first and then the face nearest
the previous one, median-smooths the detected boxes over time, interpolates the frames in between
linearly and holds the first/last detection at the ends. ``crop_faces`` cuts a square around each
box with a margin; parts outside the image are filled with black (no invented content). With a
detector that also gives eye landmarks (MediaPipe's), ``face_track(..., align=True)`` levels each
crop on the eye line (in-plane roll only: the usual similarity alignment of face pipelines,
without changing the crop's scale, which the box already sets).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from datasets.records import FaceTrack

HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@runtime_checkable
class FaceDetector(Protocol):
    """Plug-in face detector: ``detect`` takes a (H, W) uint8 grey image, returns (m, 4) int boxes
    (x, y, w, h) in pixels, m = 0 when there is no face. ``name`` goes into shard provenance."""

    name: str

    def detect(self, gray: np.ndarray) -> np.ndarray: ...


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (``cv2.data.haarcascades``, bundled with the wheel).

    min_size_fraction: smallest face side as a fraction of the image's shorter side.
    Defaults measured on scikit-image's ``lfw_subset`` upscaled to 128 px: 85/100 faces found,
    0/100 non-faces fired (see tests/test_faces.py). Pickles by its parameters, so it can be
    shipped to worker processes (the OpenCV cascade itself cannot be pickled).
    """

    name = "haar"

    def __init__(
        self, min_size_fraction: float = 0.1, scale_factor: float = 1.1, min_neighbors: int = 4
    ):
        if not 0.0 < min_size_fraction <= 1.0:
            raise ValueError(f"min_size_fraction must be in (0, 1], got {min_size_fraction}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        self.min_size_fraction = float(min_size_fraction)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        path = cv2.data.haarcascades + HAAR_CASCADE
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")

    def __reduce__(self):
        return (HaarDetector, (self.min_size_fraction, self.scale_factor, self.min_neighbors))

    def __repr__(self) -> str:
        return (
            f"HaarDetector(min_size_fraction={self.min_size_fraction}, "
            f"scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors})"
        )

    def detect(self, gray: np.ndarray) -> np.ndarray:
        """(m, 4) int boxes (x, y, w, h) of the faces in a (H, W) uint8 grey image."""
        side = max(int(round(min(gray.shape[:2]) * self.min_size_fraction)), 1)
        boxes = self._cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
        )
        return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)  # () or (m, 4) -> (m, 4)


class MediaPipeFaceDetector:
    """MediaPipe Face Detection (BlazeFace), boxes in HaarDetector's (x, y, w, h) pixel format.

    model_selection 0 is the short-range model (faces within about 2 m, i.e. large in the frame),
    1 the full-range one. Measured on scikit-image's ``lfw_subset`` upscaled to 128 px (faces
    fill the image, as in a face video): short range found 99/100 faces and fired on 1/100
    non-faces at every threshold from 0.3 to 0.7, full range found 2/100, so 0 is the default.
    Short range misses faces narrower than about a sixth of the image (the astronaut's face at
    76 px in a 640 px frame); full range finds those (see benchmarks/detectors.py).

    The grey image is given to MediaPipe as three equal RGB channels. Unlike Haar's, a box may
    reach past the image edge (a face cut by the border); ``crop_square`` pads the outside black.
    The boxes differ from Haar's (on the astronaut the same size but 17 px lower; IoU with Haar's
    box about 0.7 on both test photos), so crops from the two detectors are not interchangeable.
    Each image is detected on its own (no tracking between calls). Pickles by its parameters,
    like ``HaarDetector``; the MediaPipe graph is built on first use in each process. ``name``
    is ``"mediapipe"`` (short range) or ``"mediapipe-full"``, as ``make_detector`` spells them.
    Raises ``datasets.pose.MediaPipeUnavailable`` (with the install commands) without MediaPipe.
    """

    def __init__(self, min_confidence: float = 0.5, model_selection: int = 0):
        from datasets.pose import require_mediapipe

        require_mediapipe()
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if model_selection not in (0, 1):
            raise ValueError(f"model_selection must be 0 or 1, got {model_selection!r}")
        self.min_confidence = float(min_confidence)
        self.model_selection = int(model_selection)
        self.name = "mediapipe" if self.model_selection == 0 else "mediapipe-full"
        self._graph = None

    def __reduce__(self):
        return (MediaPipeFaceDetector, (self.min_confidence, self.model_selection))

    def __repr__(self) -> str:
        return (
            f"MediaPipeFaceDetector(min_confidence={self.min_confidence}, "
            f"model_selection={self.model_selection})"
        )

    def close(self) -> None:
        """Release the MediaPipe graph (it is rebuilt if ``detect`` is called again)."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def detect(self, gray: np.ndarray) -> np.ndarray:
        """(m, 4) int boxes (x, y, w, h) of the faces in a (H, W) uint8 grey image."""
        return self.detect_eyes(gray)[0]

    def detect_eyes(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes as ``detect`` and, per box, the eye centres (m, 4) float pixels: the person's
        right eye (x, y) then left eye (x, y) -- BlazeFace's first two keypoints."""
        if self._graph is None:
            from mediapipe.python.solutions import face_detection

            self._graph = face_detection.FaceDetection(
                min_detection_confidence=self.min_confidence, model_selection=self.model_selection
            )
        height, width = gray.shape[:2]
        rgb = np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))  # (H, W, 3)
        found = self._graph.process(rgb).detections or []
        boxes, eyes = [], []
        for det in found:
            rel = det.location_data.relative_bounding_box
            x, y = round(rel.xmin * width), round(rel.ymin * height)
            w, h = round(rel.width * width), round(rel.height * height)
            if w >= 1 and h >= 1:
                boxes.append((x, y, w, h))
                right, left = det.location_data.relative_keypoints[:2]
                eyes.append((right.x * width, right.y * height, left.x * width, left.y * height))
        return (
            np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
            np.asarray(eyes, dtype=np.float64).reshape(-1, 4),
        )


class NoDetector:
    """Finds nothing, so ``face_track`` always falls back to the centre square crop."""

    name = "none"

    def detect(self, gray: np.ndarray) -> np.ndarray:
        """Always (0, 4)."""
        return np.zeros((0, 4), dtype=np.int64)


def make_detector(name: str) -> FaceDetector:
    """Detector for a CLI name: ``"haar"`` (default parameters), ``"mediapipe"`` (short range),
    ``"mediapipe-full"`` (full range, for small faces) or ``"none"`` (centre crop).

    The MediaPipe ones are optional: without MediaPipe they raise
    ``datasets.pose.MediaPipeUnavailable`` whose message holds the install commands.
    """
    if name == "haar":
        return HaarDetector()
    if name == "mediapipe":
        return MediaPipeFaceDetector(model_selection=0)
    if name == "mediapipe-full":
        return MediaPipeFaceDetector(model_selection=1)
    if name == "none":
        return NoDetector()
    raise ValueError(
        f"unknown face detector {name!r} (choose 'haar', 'mediapipe', 'mediapipe-full' or 'none')"
    )


def _to_gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def detection_frames(n: int, every: int) -> np.ndarray:
    """Indices of the frames ``track_faces`` runs the detector on: 0, every, 2·every, …, n-1."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if n < 1:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.r_[np.arange(0, n, every), n - 1]).astype(np.int64)


def _pick(boxes: np.ndarray, previous: np.ndarray | None) -> int:
    """Index of the largest box, or of the box whose centre is nearest the previous box's."""
    if previous is None:
        return int(np.argmax(boxes[:, 2] * boxes[:, 3]))
    centres = boxes[:, :2] + boxes[:, 2:] / 2.0  # (m, 2)
    target = previous[:2] + previous[2:] / 2.0  # (2,)
    return int(np.argmin(((centres - target) ** 2).sum(axis=1)))


def moving_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median over a centred window along axis 0, the ends padded by repeating the end values."""
    if window <= 1 or len(values) < 2:
        return values.astype(np.float64)
    half = window // 2
    padded = np.concatenate([values[:1].repeat(half, 0), values, values[-1:].repeat(half, 0)])
    stacked = np.stack([padded[i : i + len(values)] for i in range(2 * half + 1)])  # (w, n, 4)
    return np.median(stacked, axis=0)


def centre_box(height: int, width: int) -> np.ndarray:
    """(4,) float box (x, y, w, h) of the largest centred square."""
    side = min(height, width)
    return np.array([(width - side) / 2.0, (height - side) / 2.0, side, side], dtype=np.float64)


def track_faces(
    frames: np.ndarray, detector: FaceDetector, every: int = 5, smooth: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Face box per frame: (boxes (n, 4) float x, y, w, h; detected (n,) bool).

    Detection runs on ``detection_frames(n, every)``; ``detected`` is True where it found a face.
    The chosen boxes are median-smoothed over ``smooth`` consecutive detections (1 = off), then
    interpolated linearly in between and held before the first / after the last detection. When
    no frame has a face, every box is the centre square and ``detected`` is all False.
    """
    boxes, detected, _ = _track(frames, detector, every, smooth, roll=False)
    return boxes, detected


def track_faces_and_roll(
    frames: np.ndarray, detector, every: int = 5, smooth: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``track_faces`` plus the head's roll per frame (n,) in degrees: the angle of the line
    from the person's right eye to their left eye against the image's horizontal (positive when
    the left eye, on the image's right, is lower), smoothed and interpolated like the boxes.
    ``detector`` must have ``detect_eyes`` (MediaPipe's has; Haar's cascade finds no eyes)."""
    if not hasattr(detector, "detect_eyes"):
        raise ValueError(
            f"face alignment needs eye landmarks, which the {detector.name!r} detector does not "
            "give; use --detector mediapipe"
        )
    return _track(frames, detector, every, smooth, roll=True)


def _track(frames, detector, every: int, smooth: int, roll: bool):
    n, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    detected = np.zeros(n, dtype=bool)
    keys: list[int] = []
    chosen: list[np.ndarray] = []
    angles: list[float] = []
    previous = None
    for i in detection_frames(n, every):
        gray = _to_gray(frames[i])
        if roll:
            found, eyes = detector.detect_eyes(gray)
        else:
            found = detector.detect(gray)
        found = np.asarray(found).reshape(-1, 4)
        if len(found) == 0:
            continue
        k = _pick(found.astype(np.float64), previous)
        previous = found[k].astype(np.float64)
        detected[i] = True
        keys.append(int(i))
        chosen.append(previous)
        if roll:
            rx, ry, lx, ly = eyes[k]
            angles.append(float(np.arctan2(ly - ry, lx - rx)))
    if not keys:
        return np.tile(centre_box(height, width), (n, 1)), detected, np.zeros(n)  # (n, 4)
    smoothed = moving_median(np.stack(chosen), smooth)  # (d, 4)
    t = np.arange(n)
    boxes = np.stack([np.interp(t, keys, smoothed[:, c]) for c in range(4)], axis=1)  # (n, 4)
    rolls = np.zeros(n)
    if roll:  # unwrap so that a head near ±180° does not average to 0
        a = moving_median(np.unwrap(np.asarray(angles))[:, None], smooth)[:, 0]  # (d,)
        rolls = np.degrees(np.interp(t, keys, a))
    return boxes, detected, rolls


def _square(box: np.ndarray, margin: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop around ``box`` (see ``crop_square``)."""
    x, y, w, h = (float(v) for v in box)
    side = max(int(round(max(w, h) * (1.0 + 2.0 * margin))), 1)
    return int(round(x + w / 2.0 - side / 2.0)), int(round(y + h / 2.0 - side / 2.0)), side


def crop_square(frame: np.ndarray, box: np.ndarray, margin: float, roll: float = 0.0) -> np.ndarray:
    """Square (s, s, 3) crop centred on ``box``, side max(w, h)·(1 + 2·margin); black outside.

    ``roll`` (degrees, see ``track_faces_and_roll``) turns the crop about its centre by that
    angle, so that a face whose eye line is tilted by ``roll`` comes out level (bilinear)."""
    x0, y0, side = _square(box, margin)
    if roll:
        centre = (x0 + (side - 1) / 2.0, y0 + (side - 1) / 2.0)  # pixel centres are integers
        m = cv2.getRotationMatrix2D(centre, float(roll), 1.0)  # (2, 3) frame -> levelled frame
        m[:, 2] -= (x0, y0)  # ... -> crop coordinates
        return cv2.warpAffine(
            frame, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
    out = np.zeros((side, side) + frame.shape[2:], dtype=frame.dtype)
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + side, frame.shape[1]), min(y0 + side, frame.shape[0])
    if fx1 > fx0 and fy1 > fy0:
        out[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = frame[fy0:fy1, fx0:fx1]
    return out


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size:
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def crop_faces(
    frames: np.ndarray,
    boxes: np.ndarray,
    size: int,
    margin: float = 0.2,
    rolls: np.ndarray | None = None,
) -> np.ndarray:
    """Square face crops (n, size, size, 3) uint8: ``crop_square`` per frame, resized to size².

    ``margin`` is added on every side as a fraction of the box's longer side; ``rolls`` (n,)
    degrees levels each crop (None: no rotation).
    """
    if len(frames) != len(boxes):
        raise ValueError(f"{len(frames)} frames but {len(boxes)} boxes")
    rolls = np.zeros(len(frames)) if rolls is None else np.asarray(rolls, dtype=np.float64)
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)  # (n, S, S, 3)
    for i, (frame, box) in enumerate(zip(frames, boxes, strict=True)):
        out[i] = _resize(crop_square(frame, box, margin, rolls[i]), size)
    return out


def face_track(
    frames: np.ndarray,
    detector: FaceDetector,
    size: int,
    every: int = 5,
    margin: float = 0.2,
    smooth: int = 3,
    align: bool = False,
) -> FaceTrack:
    """Track, crop and resize the face of a (n, H, W, 3) uint8 video to a ``FaceTrack``.

    face_fraction = detections / frames the detector ran on. With no face anywhere the largest
    centred square (no margin) is used for every frame and ``centre_cropped`` is True. ``align``
    levels every crop on the eye line (roll only; needs a detector with ``detect_eyes``).
    """
    if align:
        boxes, detected, rolls = track_faces_and_roll(frames, detector, every, smooth)
    else:
        (boxes, detected), rolls = track_faces(frames, detector, every, smooth), None
    tried = len(detection_frames(len(frames), every))
    if not detected.any():
        return FaceTrack(crop_faces(frames, boxes, size, margin=0.0), 0.0, True)
    fraction = float(detected.sum()) / tried
    return FaceTrack(crop_faces(frames, boxes, size, margin=margin, rolls=rolls), fraction, False)
