"""Seeded synthetic body gestures: 2-D BODY_25-like joint sequences with known classes.

Each class is set by the motion of a few joints over time, on top of per-subject body scale and
proportions, position, gesture amplitude, per-sequence speed (T from 40 to 120 frames, idle frames
before and after the gesture), joint noise and missing joints (NaN with confidence 0: random
drop-outs, a short wrist occlusion in some sequences, and for some subjects one face or foot joint
that is never seen). "raise_right" and "lower_right" pass through the same poses in opposite time
order, so no single frame tells them apart. Coordinates are pixel-like (about 200 px per body
height, y pointing down as in OpenPose output). numpy only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datasets.records import JointSequence, SourceItem

GESTURE_CLASSES: tuple[str, ...] = (
    "raise_right",
    "lower_right",
    "circle_right",
    "wave_left",
    "bow",
    "shrug",
)

# BODY_25 rest pose (x, y) in body heights, y up; OpenPose joint order.
_REST = np.array(
    [
        (0.00, 1.62), (0.00, 1.45), (-0.20, 1.45), (-0.25, 1.16), (-0.27, 0.90),  # nose..RWrist
        (0.20, 1.45), (0.25, 1.16), (0.27, 0.90), (0.00, 0.95), (-0.10, 0.95),  # LSh..RHip
        (-0.11, 0.50), (-0.12, 0.08), (0.10, 0.95), (0.11, 0.50), (0.12, 0.08),  # RKnee..LAnkle
        (-0.03, 1.66), (0.03, 1.66), (-0.07, 1.63), (0.07, 1.63),  # eyes, ears
        (0.17, 0.00), (0.20, 0.01), (0.10, 0.02), (-0.17, 0.00), (-0.20, 0.01), (-0.10, 0.02),
    ],
    dtype=np.float64,
)  # fmt: skip
_UPPER = np.array([0, 1, 2, 3, 4, 5, 6, 7, 15, 16, 17, 18])  # joints above the hips
_ARM_UPPER, _ARM_FORE = 0.29, 0.27  # segment lengths, body heights


def _arm(shoulder: np.ndarray, upper: np.ndarray, fore: np.ndarray) -> tuple:
    """Elbow and wrist (n, 2) from a shoulder (n, 2) and absolute segment angles (n,)."""
    elbow = shoulder + _ARM_UPPER * np.stack([np.cos(upper), np.sin(upper)], axis=-1)
    wrist = elbow + _ARM_FORE * np.stack([np.cos(fore), np.sin(fore)], axis=-1)
    return elbow, wrist


def _pose(label: str, s: np.ndarray, amp: float) -> np.ndarray:
    """Poses (n, 25, 2) in body heights for gesture progress ``s`` (n,) in [0, 1]."""
    n = len(s)
    p = np.repeat(_REST[None], n, axis=0)  # (n, 25, 2)
    down = -np.pi / 2
    if label in ("raise_right", "lower_right"):
        prog = s if label == "raise_right" else 1.0 - s
        ang = down - prog * np.pi * amp  # the right arm swings out and up, through the side
        p[:, 3], p[:, 4] = _arm(p[:, 2], ang, ang)
    elif label == "circle_right":
        phase = 2 * np.pi * 2 * s  # two loops
        p[:, 3] = p[:, 2] + (0.05, -0.25)
        p[:, 4] = p[:, 3] + 0.18 * amp * np.stack([np.cos(phase), np.sin(phase)], axis=-1)
    elif label == "wave_left":
        lift = np.clip(4 * np.minimum(s, 1 - s), 0, 1)  # raise, wave, lower
        upper = down + lift * 2.0
        fore = upper + lift * (0.6 + 0.5 * amp * np.sin(2 * np.pi * 3 * s))
        p[:, 6], p[:, 7] = _arm(p[:, 5], upper, fore)
    elif label == "bow":
        theta = 0.8 * amp * np.sin(np.pi * s)  # torso leans towards the camera and back
        hip = _REST[8]
        up = p[:, _UPPER] - hip  # (n, 12, 2)
        p[:, _UPPER, 1] = hip[1] + up[..., 1] * np.cos(theta)[:, None]
        p[:, _UPPER, 0] = hip[0] + up[..., 0] * (1 + 0.1 * np.sin(theta))[:, None]
    elif label == "shrug":
        lift = 0.09 * amp * np.abs(np.sin(2 * np.pi * s))  # two shrugs
        p[:, [2, 3, 4, 5, 6, 7], 1] += lift[:, None]
    else:
        raise ValueError(f"unknown gesture {label!r}; choose one of {GESTURE_CLASSES}")
    return p


def _sequence(label: str, subject: dict, rng: np.random.Generator, num_joints: int):
    """One sequence: joints (T, J, 2) float32 with NaN where missing, confidence (T, J)."""
    T = int(rng.integers(40, 121))
    lead, tail = rng.uniform(0.0, 0.2, size=2)
    t = np.linspace(0.0, 1.0, T)
    s = np.clip((t - lead) / (1.0 - lead - tail), 0.0, 1.0)
    pose = _pose(label, s, subject["amp"] * rng.uniform(0.9, 1.1))  # (T, 25, 2)
    pose = pose * subject["proportions"]  # (T, 25, 2)
    sway = 0.02 * np.sin(2 * np.pi * (t * rng.uniform(0.5, 1.5) + rng.uniform()))
    pose[..., 0] += sway[:, None]
    pose = pose + rng.normal(0.0, 0.008, size=pose.shape)
    xy = np.empty_like(pose)
    xy[..., 0] = subject["offset"][0] + subject["scale"] * pose[..., 0]
    xy[..., 1] = subject["offset"][1] - subject["scale"] * pose[..., 1]  # image y points down
    xy = xy[:, :num_joints]
    conf = rng.uniform(0.6, 1.0, size=xy.shape[:2])  # (T, J)
    conf[rng.uniform(size=conf.shape) < 0.03] = 0  # random drop-outs
    if rng.uniform() < 0.25:  # a short occlusion of one wrist
        start = int(rng.integers(0, T - 5))
        conf[start : start + 5, int(rng.choice([4, 7]))] = 0
    hidden = subject["hidden"]
    if hidden is not None and hidden < num_joints:
        conf[:, hidden] = 0
    xy[conf == 0] = np.nan
    return xy.astype(np.float32), conf.astype(np.float32)


def _subject(seed: int, index: int) -> dict:
    rng = np.random.default_rng([seed, index])
    return {
        "scale": rng.uniform(150.0, 250.0),
        "proportions": np.array([rng.uniform(0.85, 1.15), rng.uniform(0.9, 1.1)]),
        "offset": rng.uniform((150.0, 350.0), (450.0, 450.0)),
        "amp": rng.uniform(0.8, 1.0),
        "hidden": int(rng.integers(15, 25)) if rng.uniform() < 0.5 else None,
    }


def generate_gestures(
    n_subjects: int = 6, per_class: int = 4, seed: int = 0, num_joints: int = 25
) -> list[tuple[SourceItem, JointSequence]]:
    """``n_subjects * len(GESTURE_CLASSES) * per_class`` labelled sequences, deterministic in seed.

    Subjects are "s00", "s01", ...; items are ordered subject, class, repetition and numbered with
    one running index: id = "<label>/<subject>_<index:04d>" (the id that
    :func:`datasets.sources.scan_folders` gives the file :func:`write_gesture_set` writes), path
    = "". ``num_joints`` (8..25) keeps the first joints of the BODY_25 order (the gestures move
    joints 0-7).
    """
    if not 8 <= num_joints <= 25:
        raise ValueError(f"num_joints must be in 8..25, got {num_joints}")
    layout = "body25" if num_joints == 25 else f"body25-first{num_joints}"
    out = []
    index = 0
    for si in range(n_subjects):
        subject = _subject(seed, si)
        name = f"s{si:02d}"
        for ci, label in enumerate(GESTURE_CLASSES):
            for rep in range(per_class):
                rng = np.random.default_rng([seed, si, ci, rep])
                joints, conf = _sequence(label, subject, rng, num_joints)
                item_id = f"{label}/{name}_{index:04d}"
                seq = JointSequence(joints, conf, f"synthetic:{item_id}", layout)
                out.append((SourceItem(item_id, name, label, ""), seq))
                index += 1
    return out


def write_gesture_set(
    out_dir: str | Path, n_subjects: int = 6, per_class: int = 4, seed: int = 0
) -> list[Path]:
    """Write :func:`generate_gestures` as ``out_dir/<label>/<subject>_<index>.npz`` files.

    Each file holds ``joints`` (T, 25, 2) and ``confidence`` (T, 25) float32 and is written under a
    hidden temporary name, then renamed, so a reader never sees a partial file.
    """
    out_dir = Path(out_dir)
    paths = []
    for item, seq in generate_gestures(n_subjects, per_class, seed):
        path = out_dir / f"{item.id}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        with open(tmp, "wb") as f:
            np.savez(f, joints=seq.joints, confidence=seq.confidence)
        os.replace(tmp, path)
        paths.append(path)
    return paths


__all__ = ["GESTURE_CLASSES", "generate_gestures", "write_gesture_set"]
