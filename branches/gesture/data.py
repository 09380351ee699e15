"""The gesture branch's data: its shard row and schema, its preprocessing options and the
per-item function (read a joint file or estimate the pose, fill missing joints) that
preprocessing and prediction both run.

A gesture row: id, subject, label, label_name, n_frames, n_joints, dims, joints
(n_frames*n_joints*dims float32), confidence (n_frames*n_joints float32), layout, source;
:func:`gesture_arrays` reads the payloads back without copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datasets.records import SourceItem
from datasets.shards import SCHEMA_VERSION
from datasets.video import check_max_frames

# Joint files (OpenPose JSON frames come as a folder per sequence).
JOINT_EXTENSIONS = (".json", ".csv", ".txt", ".npy", ".npz")


GESTURE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("subject", pa.string()),
        ("label", pa.int16()),
        ("label_name", pa.string()),
        ("n_frames", pa.int32()),
        ("n_joints", pa.int32()),
        ("dims", pa.int32()),
        ("joints", pa.large_binary()),
        ("confidence", pa.large_binary()),
        ("layout", pa.string()),
        ("source", pa.string()),
    ],
    metadata={"emovis.schema_version": str(SCHEMA_VERSION), "emovis.rows": "joint-sequence"},
)


@dataclass(frozen=True)
class GestureRow:
    """One joint sequence (missing joints already filled), ready to be written as a shard row."""

    id: str
    subject: str
    label: int
    label_name: str
    joints: np.ndarray  # (T, J, D) float32
    confidence: np.ndarray  # (T, J) float32
    layout: str
    source: str


def gesture_table(rows: Sequence[GestureRow]) -> pa.Table:
    """Arrow table of gesture rows (schema :data:`GESTURE_SCHEMA`)."""
    for r in rows:
        if r.joints.ndim != 3 or r.confidence.shape != r.joints.shape[:2]:
            raise ValueError(f"{r.id}: joints {r.joints.shape} / confidence {r.confidence.shape}")
    cols = {
        "id": [r.id for r in rows],
        "subject": [r.subject for r in rows],
        "label": [r.label for r in rows],
        "label_name": [r.label_name for r in rows],
        "n_frames": [r.joints.shape[0] for r in rows],
        "n_joints": [r.joints.shape[1] for r in rows],
        "dims": [r.joints.shape[2] for r in rows],
        "joints": [np.ascontiguousarray(r.joints, np.float32).tobytes() for r in rows],
        "confidence": [np.ascontiguousarray(r.confidence, np.float32).tobytes() for r in rows],
        "layout": [r.layout for r in rows],
        "source": [r.source for r in rows],
    }
    return pa.Table.from_pydict(cols, schema=GESTURE_SCHEMA)


def gesture_arrays(
    joints: bytes, confidence: bytes, n_frames: int, n_joints: int, dims: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a row's joint payloads into (T, J, D) and (T, J) float32 views."""
    t, j = int(n_frames), int(n_joints)
    return (
        np.frombuffer(joints, dtype=np.float32).reshape(t, j, int(dims)),
        np.frombuffer(confidence, dtype=np.float32).reshape(t, j),
    )


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
        check_max_frames(self.max_frames)


def process_gesture_item(item: SourceItem, label: int, opts: GestureOptions) -> GestureRow:
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


def gesture_row(item: SourceItem, label: int, seq, opts: GestureOptions) -> GestureRow:
    """A ``JointSequence`` (Kinect mapped to reference units, missing joints filled if the
    options say so) as a shard row."""
    from datasets.joints import fill_missing

    seq = to_reference_units(seq)
    if opts.fill_missing:
        seq = fill_missing(seq)
    return GestureRow(
        id=item.id,
        subject=item.subject,
        label=label,
        label_name=item.label,
        joints=seq.joints.astype(np.float32),
        confidence=seq.confidence.astype(np.float32),
        layout=seq.layout,
        source=item.path,
    )
