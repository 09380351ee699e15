"""The facial branch's data: its shard row and schema, its preprocessing options and the
per-item function (decode, track the face, crop, resize) that preprocessing and prediction both
run.

A facial row: id, subject, label (int16, index into the manifest's ``classes``), label_name,
n_frames, size, frames (n_frames*size*size*3 uint8, C order, RGB), face_fraction,
centre_cropped, source. The frames are raw bytes next to explicit shape columns (see
``datasets.shards``); :func:`facial_frames` reads them back without copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datasets.records import SourceItem
from datasets.shards import SCHEMA_VERSION
from datasets.video import check_max_frames

FACIAL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("subject", pa.string()),
        ("label", pa.int16()),
        ("label_name", pa.string()),
        ("n_frames", pa.int32()),
        ("size", pa.int32()),
        ("frames", pa.large_binary()),
        ("face_fraction", pa.float32()),
        ("centre_cropped", pa.bool_()),
        ("source", pa.string()),
    ],
    metadata={"emovis.schema_version": str(SCHEMA_VERSION), "emovis.rows": "video"},
)


@dataclass(frozen=True)
class FacialRow:
    """One preprocessed video, ready to be written as a facial shard row."""

    id: str
    subject: str
    label: int
    label_name: str
    frames: np.ndarray  # (n, S, S, 3) uint8
    face_fraction: float
    centre_cropped: bool
    source: str


def facial_table(rows: Sequence[FacialRow]) -> pa.Table:
    """Arrow table of facial rows (schema :data:`FACIAL_SCHEMA`)."""
    for r in rows:
        f = r.frames
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[1] != f.shape[2] or f.shape[3] != 3:
            raise ValueError(f"{r.id}: frames must be (n, S, S, 3) uint8, got {f.dtype} {f.shape}")
    cols = {
        "id": [r.id for r in rows],
        "subject": [r.subject for r in rows],
        "label": [r.label for r in rows],
        "label_name": [r.label_name for r in rows],
        "n_frames": [r.frames.shape[0] for r in rows],
        "size": [r.frames.shape[1] for r in rows],
        "frames": [np.ascontiguousarray(r.frames).tobytes() for r in rows],
        "face_fraction": [float(r.face_fraction) for r in rows],
        "centre_cropped": [bool(r.centre_cropped) for r in rows],
        "source": [r.source for r in rows],
    }
    return pa.Table.from_pydict(cols, schema=FACIAL_SCHEMA)


def facial_frames(frames: bytes, n_frames: int, size: int) -> np.ndarray:
    """Decode a row's ``frames`` payload into a read-only (n, S, S, 3) uint8 view."""
    return np.frombuffer(frames, dtype=np.uint8).reshape(int(n_frames), int(size), int(size), 3)


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
        check_max_frames(self.max_frames)


def process_facial_item(
    item: SourceItem, label: int, opts: FacialOptions, detector, notes: list | None = None
) -> FacialRow:
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
    return FacialRow(
        id=item.id,
        subject=item.subject,
        label=label,
        label_name=item.label,
        frames=track.frames,
        face_fraction=track.face_fraction,
        centre_cropped=track.centre_cropped,
        source=item.path,
    )
