"""Typed records passed between the data steps (no dicts of anything)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class BadInput(ValueError):
    """An input file or folder that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class SourceItem:
    """One labelled item to preprocess: a video file, an image-sequence folder or a joint file.

    ``id`` is unique within a dataset, ``subject`` groups items for subject-independent folds and
    ``label`` is the class name (not an index: the index is fixed by the manifest's class list).
    """

    id: str
    subject: str
    label: str
    path: str


@dataclass(frozen=True)
class JointSequence:
    """Joint positions of one person over time.

    joints: (T, J, D) float32 with D = 2 or 3, NaN where a joint is missing.
    confidence: (T, J) float32 in [0, 1]; 0 marks a missing joint.
    layout: the joint layout, e.g. "body25", "coco18", "kinect25", "mocap28", "array".
    """

    joints: np.ndarray
    confidence: np.ndarray
    source: str
    layout: str

    def __post_init__(self) -> None:
        j, c = self.joints, self.confidence
        if j.ndim != 3 or j.shape[2] not in (2, 3):
            raise BadInput(self.source, f"joints must be (T, J, 2|3), got {j.shape}")
        if c.shape != j.shape[:2]:
            raise BadInput(self.source, f"confidence {c.shape} does not match joints {j.shape}")


@dataclass(frozen=True)
class FaceTrack:
    """Face crops of one video: frames (n, S, S, 3) uint8 RGB.

    face_fraction: fraction of frames where the detector found a face (before interpolation).
    centre_cropped: True when no face was found anywhere and a centre crop was used instead.
    """

    frames: np.ndarray
    face_fraction: float
    centre_cropped: bool
