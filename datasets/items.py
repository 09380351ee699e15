"""Per-item preprocessing: one source item (video, image sequence, joint file) -> one shard row.

These are the deterministic steps that run once, offline (decode, detect, crop, resize; read and
fill joints). The Ray job (``distributed.preprocess``) calls them per planned shard, and
prediction (``distributed.inference.predictor``) calls the very same functions on new inputs, so a
predicted item is preprocessed exactly as its training data was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets import shards
from datasets.records import SourceItem

# Joint files (OpenPose JSON frames come as a folder per sequence).
JOINT_EXTENSIONS = (".json", ".csv", ".txt", ".npy", ".npz")


@dataclass(frozen=True)
class FacialOptions:
    """Per-item facial preprocessing settings (recorded in the manifest and in checkpoints)."""

    size: int = 224
    detector: str = "haar"
    every: int = 5
    margin: float = 0.2
    max_frames: int | None = None
    align: bool = False  # level each crop on the eye line (needs a MediaPipe detector)

    def __post_init__(self) -> None:
        if self.align and not self.detector.startswith("mediapipe"):
            raise ValueError(
                f"--align levels faces on their eye landmarks, which the {self.detector!r} "
                "detector does not find; use --detector mediapipe (or mediapipe-full)"
            )
        if self.size < 8:
            raise ValueError(f"crop size must be >= 8, got {self.size}")
        if self.every < 1:
            raise ValueError(f"detection interval must be >= 1, got {self.every}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        _check_max_frames(self.max_frames)


def _check_max_frames(max_frames: int | None) -> None:
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1 (frames kept per video), got {max_frames}")


POSE_ESTIMATORS = ("mediapipe",)


@dataclass(frozen=True)
class GestureOptions:
    """Per-item gesture preprocessing settings. ``pose``: None reads joint files; "mediapipe"
    runs pose estimation on videos / image sequences (33 landmarks, ``datasets.pose``)."""

    fill_missing: bool = True
    pose: str | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.pose is not None and self.pose not in POSE_ESTIMATORS:
            raise ValueError(f"--pose must be one of {POSE_ESTIMATORS}, got {self.pose!r}")
        _check_max_frames(self.max_frames)


def process_facial_item(
    item: SourceItem, label: int, opts: FacialOptions, detector, notes: list | None = None
) -> shards.FacialRow:
    """Decode, detect, crop and resize one video into a shard row (raises BadInput); what a user
    should hear about the decode (dropped frames) is appended to ``notes``."""
    from datasets.video import decode_frames

    decoded = decode_frames(item.path, max_frames=opts.max_frames)
    if notes is not None:
        notes.extend(decoded.notes())
    return facial_row(item, label, decoded.frames, opts, detector)


def facial_row(item: SourceItem, label: int, frames: np.ndarray, opts: FacialOptions, detector):
    """Face-track already decoded (n, H, W, 3) uint8 RGB frames into a shard row."""
    from datasets.faces import face_track

    track = face_track(
        frames, detector, opts.size, every=opts.every, margin=opts.margin, align=opts.align
    )
    return shards.FacialRow(
        id=item.id,
        subject=item.subject,
        label=label,
        label_name=item.label,
        frames=track.frames,
        face_fraction=track.face_fraction,
        centre_cropped=track.centre_cropped,
        source=item.path,
    )


def process_gesture_item(item: SourceItem, label: int, opts: GestureOptions) -> shards.GestureRow:
    """Read one joint file (or, with ``opts.pose``, estimate the pose in every frame of a video
    or image sequence), fill missing joints, into a shard row (raises BadInput)."""
    if opts.pose == "mediapipe":
        from datasets.pose import pose_from_path

        return gesture_row(item, label, pose_from_path(item.path, opts.max_frames), opts)
    from datasets.joints import read_joints

    return gesture_row(item, label, read_joints(item.path), opts)


KINECT_SCALE = 372.0


def to_reference_units(seq):
    """Kinect v2 camera-space metres -> the pixel-like units the paper's code works in.

    The reference maps Kinect coordinates with ``(1 - v) * 372`` before its per-frame
    normalisation, which truncates coordinates to whole units first: on raw metres (|v| < 2) that
    would leave a handful of positions. Other layouts (OpenPose and MediaPipe pixels, mocap in
    its own units) already are whole-unit scales and are kept as read."""
    if seq.layout != "kinect25":
        return seq
    from datasets.records import JointSequence

    joints = seq.joints.copy()
    joints[..., :2] = (1.0 - joints[..., :2]) * KINECT_SCALE  # x, y; z (depth) as read
    return JointSequence(joints, seq.confidence, seq.source, seq.layout)


def gesture_row(item: SourceItem, label: int, seq, opts: GestureOptions) -> shards.GestureRow:
    """A ``JointSequence`` (Kinect mapped to reference units, missing joints filled if the
    options say so) as a shard row."""
    from datasets.joints import fill_missing

    seq = to_reference_units(seq)
    if opts.fill_missing:
        seq = fill_missing(seq)
    return shards.GestureRow(
        id=item.id,
        subject=item.subject,
        label=label,
        label_name=item.label,
        joints=seq.joints.astype(np.float32),
        confidence=seq.confidence.astype(np.float32),
        layout=seq.layout,
        source=item.path,
    )


def video_fps(path: str) -> float | None:
    """Frames per second a video container declares (None for folders, images, unknown)."""
    p = Path(path)
    if not p.is_file():
        return None
    import cv2

    from datasets.video import open_capture

    cap = open_capture(p)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if np.isfinite(fps) and fps > 0 else None
