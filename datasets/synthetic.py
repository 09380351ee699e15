"""Seeded synthetic facial-expression videos (no download) for smoke runs and tests.

``python -m datasets.synthetic facial --out DIR`` writes ``DIR/faces/<label>/<subject>_<index>.avi``
(OpenCV's own MJPEG writer: every frame coded alone at a fixed quality, so a reversed video
decodes to exactly the reversed frames) and, through
``datasets.synthetic_gesture.write_gesture_set``, the matching gesture set in ``DIR/gestures``.

Faces: scikit-image's astronaut and matplotlib's Grace Hopper, both found by the default Haar
detector. A "subject" is one source face under its own placement, scale, mirror, hue, gamma and
contrast, so subject-independent folds really hold unseen faces. The class lives only in the
dynamics: a smooth displacement field (``cv2.remap``) plus painted shading moves the mouth, brows
or eyes from neutral to apex. ``open_mouth`` and ``close_mouth`` hold exactly the same frames in
opposite order, so a model blind to frame order cannot beat chance on that pair.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Sorted, so the order equals datasets.sources.class_names_for on the written folders.
FACIAL_CLASSES: tuple[str, ...] = ("close_mouth", "narrow_eyes", "open_mouth", "raise_brows")
FOURCC = "MJPG"
EXTENSION = ".avi"

# Haar box (x, y, w, h) of each source face at its native resolution (HaarDetector defaults).
_ASTRONAUT_BOX = (177, 66, 95, 95)
_HOPPER_BOX = (155, 105, 222, 222)
# Landmarks as fractions of the face box (both faces are frontal and close to these).
_EYES = ((0.29, 0.37), (0.71, 0.37))
_BROWS = ((0.29, 0.26), (0.71, 0.26))
_MOUTH = (0.5, 0.79)


@dataclass(frozen=True)
class Subject:
    """One synthetic subject: a source face placed and coloured in its own way."""

    name: str
    index: int
    source: int  # 0 astronaut, 1 Grace Hopper
    face_fraction: float  # face box side / frame side
    centre: tuple[float, float]  # face centre, fractions of the frame
    mirror: bool
    hue_shift: int  # OpenCV hue units (0..179)
    gamma: float
    contrast: float


def _source_faces() -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    from matplotlib import cbook
    from skimage import data

    hopper_path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    hopper = cv2.cvtColor(cv2.imread(str(hopper_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return [(data.astronaut(), _ASTRONAUT_BOX), (hopper, _HOPPER_BOX)]


def make_subjects(n_subjects: int, seed: int) -> list[Subject]:
    """``n_subjects`` distinct subjects, alternating source faces, parameters from ``seed``."""
    out = []
    for s in range(n_subjects):
        rng = np.random.default_rng([seed, s, 101])
        out.append(
            Subject(
                name=f"s{s + 1:02d}",
                index=s,
                source=s % 2,
                face_fraction=float(rng.uniform(0.45, 0.58)),
                centre=(float(rng.uniform(0.42, 0.58)), float(rng.uniform(0.42, 0.55))),
                mirror=bool((s // 2) % 2),
                hue_shift=int(rng.integers(-14, 15)) if s >= 2 else 0,
                gamma=float(rng.uniform(0.75, 1.3)),
                contrast=float(rng.uniform(0.8, 1.15)),
            )
        )
    return out


def render_neutral(
    subject: Subject, size: int, faces: Sequence[tuple[np.ndarray, tuple]]
) -> tuple[np.ndarray, np.ndarray]:
    """Neutral frame (size, size, 3) uint8 RGB and the face box (x, y, w, h) in it."""
    image, (bx, by, bw, bh) = faces[subject.source]
    side = subject.face_fraction * size
    scale = side / bw
    cx, cy = subject.centre[0] * size, subject.centre[1] * size
    sx = -scale if subject.mirror else scale
    # source face centre -> (cx, cy); mirroring flips x around it
    m = np.array([[sx, 0.0, cx - sx * (bx + bw / 2)], [0.0, scale, cy - scale * (by + bh / 2)]])
    frame = cv2.warpAffine(
        image, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT101
    )
    if subject.hue_shift:
        hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + subject.hue_shift) % 180).astype(np.uint8)
        frame = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    f = frame.astype(np.float32) / 255.0
    f = np.clip((f**subject.gamma - 0.5) * subject.contrast + 0.5, 0.0, 1.0)
    box = np.array([cx - side / 2, cy - side / 2, side, side * bh / bw])
    return (f * 255.0 + 0.5).astype(np.uint8), box


def _point(box: np.ndarray, frac: tuple[float, float]) -> tuple[float, float]:
    return box[0] + frac[0] * box[2], box[1] + frac[1] * box[3]


def _gauss(xx, yy, cx, cy, sx, sy):
    return np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2) / 2.0)


def deform(frame: np.ndarray, box: np.ndarray, cls: str, a: float) -> np.ndarray:
    """``frame`` with the expression of class ``cls`` at intensity ``a`` in [0, 1] (0 = neutral).

    close_mouth renders like open_mouth: the two classes differ only in frame order.
    """
    if a <= 0.0:
        return frame.copy()
    h, w = frame.shape[:2]
    size = box[2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) each
    dy = np.zeros((h, w), np.float32)  # output (x, y) samples the input at (x, y - dy)
    shade: list[tuple[tuple[float, float], tuple[float, float], float]] = []  # centre, axes, alpha
    if cls in ("open_mouth", "close_mouth"):
        mx, my = _point(box, _MOUTH)
        g = _gauss(xx, yy, mx, my, 0.22 * size, 0.16 * size)
        dy += 0.10 * size * a * np.tanh((yy - my) / (0.03 * size)) * g  # lips move apart
        shade.append(((mx, my), (0.17 * size, 0.09 * size * a), 0.9 * min(1.0, 4.0 * a)))
    elif cls == "raise_brows":
        for frac in _BROWS:
            bx, by = _point(box, frac)
            dy -= 0.13 * size * a * _gauss(xx, yy, bx, by, 0.17 * size, 0.14 * size)
    elif cls == "narrow_eyes":
        for frac in _EYES:
            ex, ey = _point(box, frac)
            g = _gauss(xx, yy, ex, ey, 0.13 * size, 0.09 * size)
            dy -= 2.2 * a * g * (yy - ey)  # sample farther from the eye line: the eye shrinks
            shade.append(((ex, ey), (0.12 * size, 0.035 * size), 0.9 * a))
    else:
        raise ValueError(f"unknown facial class {cls!r}; choose from {FACIAL_CLASSES}")
    out = cv2.remap(
        frame, xx, (yy - dy).astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
    )
    if cls == "raise_brows":  # forehead wrinkles
        layer = out.copy()
        x0, x1 = int(box[0] + 0.2 * size), int(box[0] + 0.8 * size)
        for k in range(3):
            y = int(round(box[1] + (0.05 + 0.06 * k) * box[3]))
            cv2.line(layer, (x0, y), (x1, y), (50, 25, 25), max(1, int(round(0.025 * size))))
        out = cv2.addWeighted(layer, 0.6 * a, out, 1 - 0.6 * a, 0)
    for (cx, cy), (ax, ay), alpha in shade:
        layer = out.copy()
        axes = (max(1, int(round(ax))), max(1, int(round(ay))))
        cv2.ellipse(layer, (int(round(cx)), int(round(cy))), axes, 0, 0, 360, (35, 8, 8), -1)
        out = cv2.addWeighted(layer, alpha, out, 1 - alpha, 0)
    return out


def intensity_curve(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T,) onset intensities: neutral, a smooth rise, then the apex held (peak 0.85..1)."""
    t = np.linspace(0.0, 1.0, n_frames)
    t0, t1 = rng.uniform(0.08, 0.25), rng.uniform(0.6, 0.8)
    u = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
    return rng.uniform(0.85, 1.0) * u * u * (3 - 2 * u)


def onset_frames(
    neutral: np.ndarray, box: np.ndarray, cls: str, n_frames: int, rng: np.random.Generator
) -> np.ndarray:
    """(T, S, S, 3) uint8 neutral -> apex video with small head jitter and sensor noise."""
    curve = intensity_curve(n_frames, rng)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    t = np.arange(n_frames)
    jitter = 1.5 * np.sin(t[:, None] * 0.5 + phase[None, :])  # (T, 2) pixels
    noise = rng.normal(0.0, 1.5, size=(n_frames,) + neutral.shape)  # (T, S, S, 3)
    size = neutral.shape[0]
    out = np.empty((n_frames,) + neutral.shape, dtype=np.uint8)  # (T, S, S, 3)
    for i in range(n_frames):
        frame = deform(neutral, box, cls, float(curve[i]))
        m = np.array([[1.0, 0.0, jitter[i, 0]], [0.0, 1.0, jitter[i, 1]]])
        frame = cv2.warpAffine(
            frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
        )
        out[i] = np.clip(frame + noise[i], 0, 255).astype(np.uint8)
    return out


def write_video(path: Path, frames: np.ndarray, fps: float = 10.0, quality: int = 80) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as MJPG AVI, via a hidden temp name and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    h, w = frames.shape[1:3]
    # OpenCV's own MJPEG encoder: every frame is coded alone with a fixed quality (FFmpeg's
    # MJPEG rate control makes the first frame of a file differ, which would leak frame order)
    writer = cv2.VideoWriter(
        str(tmp), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*FOURCC), fps, (w, h)
    )
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {FOURCC} video {tmp}")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    os.replace(tmp, path)
    return path


def facial_videos(
    subject: Subject,
    index: int,
    seed: int,
    size: int,
    n_frames: int,
    faces: Sequence[tuple[np.ndarray, tuple]],
) -> dict[str, np.ndarray]:
    """All classes' (T, S, S, 3) videos of one subject and index; close_mouth = open_mouth[::-1]."""
    neutral, box = render_neutral(subject, size, faces)
    out = {}
    for cls in ("open_mouth", "raise_brows", "narrow_eyes"):
        # one generator per (subject, index): timing, jitter and noise are shared by the classes
        rng = np.random.default_rng([seed, subject.index, index, 202])
        out[cls] = onset_frames(neutral, box, cls, n_frames, rng)
    out["close_mouth"] = out["open_mouth"][::-1].copy()
    return out


def write_facial_set(
    out_dir: str | Path,
    n_subjects: int = 6,
    per_class: int = 3,
    seed: int = 0,
    size: int = 160,
    n_frames: int = 16,
) -> list[Path]:
    """Write ``out_dir/<label>/<subject>_<index>.avi`` for every class; returns the paths."""
    if n_subjects < 1 or per_class < 1 or n_frames < 2 or size < 48:
        raise ValueError("need n_subjects >= 1, per_class >= 1, n_frames >= 2 and size >= 48")
    out_dir = Path(out_dir)
    for cls in FACIAL_CLASSES:
        (out_dir / cls).mkdir(parents=True, exist_ok=True)
    faces = _source_faces()
    paths = []
    for subject in make_subjects(n_subjects, seed):
        for index in range(per_class):
            videos = facial_videos(subject, index, seed, size, n_frames, faces)
            for cls in FACIAL_CLASSES:
                path = out_dir / cls / f"{subject.name}_{index}{EXTENSION}"
                paths.append(write_video(path, videos[cls]))
    return sorted(paths)


def write_synthetic(
    out_dir: str | Path,
    n_subjects: int = 6,
    per_class: int = 3,
    seed: int = 0,
    size: int = 160,
    n_frames: int = 16,
    gestures: bool = True,
) -> list[Path]:
    """Facial set in ``out_dir/faces`` and (unless ``gestures`` is False) the gesture set in
    ``out_dir/gestures``; returns all written paths."""
    out_dir = Path(out_dir)
    paths = write_facial_set(out_dir / "faces", n_subjects, per_class, seed, size, n_frames)
    if gestures:
        from datasets.synthetic_gesture import write_gesture_set  # owned by another module

        gesture_paths = write_gesture_set(
            out_dir / "gestures", n_subjects=n_subjects, per_class=per_class, seed=seed
        )
        paths += list(gesture_paths)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m datasets.synthetic facial --out DIR [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("facial", help="facial videos in DIR/faces + gesture set in DIR/gestures")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--subjects", type=int, default=6, help="number of subjects (default 6)")
    p.add_argument("--per-class", type=int, default=3, help="videos per subject and class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=160, help="frame side in pixels (default 160)")
    p.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    p.add_argument("--no-gestures", action="store_true", help="write the facial set only")
    p.add_argument("--smoke", action="store_true", help="tiny set: 2 subjects x 1 video, 8 frames")
    args = parser.parse_args(argv)
    if args.smoke:
        args.subjects, args.per_class, args.frames = 2, 1, 8
    paths = write_synthetic(
        args.out,
        args.subjects,
        args.per_class,
        args.seed,
        args.size,
        args.frames,
        gestures=not args.no_gestures,
    )
    print(f"wrote {len(paths)} files under {args.out}")


if __name__ == "__main__":
    main()
