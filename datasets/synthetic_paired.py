"""A paired synthetic set: one facial video and one joint sequence per item, same id and label.

    python -m datasets.synthetic_paired --out DIR [--subjects N] [--per-class R] [--smoke]

writes ``DIR/faces/<label>/<subject>_<index>.avi`` and
``DIR/gestures/<label>/<subject>_<index>.npz``
with identical label folders and stems, so both preprocessing runs give the same ids
(``<label>/<subject>_<index>``), subjects and labels, hence the same folds.

Four classes, each a (face, body) combination built from the existing generators
(:mod:`datasets.synthetic` faces, :mod:`datasets.synthetic_gesture` gestures)::

    class          face expression   body gesture
    brows_raise    raise_brows       raise_right
    brows_wave     raise_brows       wave_left
    mouth_raise    open_mouth        raise_right
    mouth_wave     open_mouth        wave_left

The face alone separates {brows_*} from {mouth_*} but cannot tell the two classes of a pair apart;
the body alone separates {*_raise} from {*_wave} but not brows from mouth. Each branch is therefore
capped at 50% accuracy (UAR 0.5) and only a fusion of both can reach 100%.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datasets import synthetic
from datasets.synthetic_gesture import generate_gestures

# class -> (facial class of datasets.synthetic, gesture class of datasets.synthetic_gesture)
PAIRED_CLASSES: dict[str, tuple[str, str]] = {
    "brows_raise": ("raise_brows", "raise_right"),
    "brows_wave": ("raise_brows", "wave_left"),
    "mouth_raise": ("open_mouth", "raise_right"),
    "mouth_wave": ("open_mouth", "wave_left"),
}


def _write_npz(path: Path, joints: np.ndarray, confidence: np.ndarray) -> Path:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        np.savez(f, joints=joints, confidence=confidence)
    os.replace(tmp, path)
    return path


def write_paired_set(
    out_dir: str | Path,
    n_subjects: int = 6,
    per_class: int = 2,
    seed: int = 0,
    size: int = 96,
    n_frames: int = 12,
) -> list[tuple[Path, Path]]:
    """Write the paired set (see the module docstring); returns (video, joints) path pairs.

    Item ``<subject>_<index>``: index runs over (class, repetition), so the two classes that share
    a facial expression get different facial draws (timing, jitter, noise) and the two classes that
    share a gesture get different gesture repetitions.
    """
    if n_subjects < 1 or per_class < 1:
        raise ValueError("need n_subjects >= 1 and per_class >= 1")
    out_dir = Path(out_dir)
    names = list(PAIRED_CLASSES)
    for name in names:
        (out_dir / "faces" / name).mkdir(parents=True, exist_ok=True)
        (out_dir / "gestures" / name).mkdir(parents=True, exist_ok=True)
    reps = len(names) * per_class  # enough distinct gesture repetitions per (subject, gesture)
    gestures = {
        (item.subject, item.label, k % reps): seq
        for k, (item, seq) in enumerate(generate_gestures(n_subjects, reps, seed))
    }
    # generate_gestures orders items subject, class, repetition: k % reps is the repetition
    faces = synthetic._source_faces()  # the generator's two bundled source faces
    out = []
    for si, subject in enumerate(synthetic.make_subjects(n_subjects, seed)):
        for ci, name in enumerate(names):
            face_cls, body_cls = PAIRED_CLASSES[name]
            for rep in range(per_class):
                index = ci * per_class + rep
                stem = f"{subject.name}_{index}"
                videos = synthetic.facial_videos(subject, index, seed, size, n_frames, faces)
                video = synthetic.write_video(
                    out_dir / "faces" / name / f"{stem}{synthetic.EXTENSION}", videos[face_cls]
                )
                seq = gestures[(f"s{si:02d}", body_cls, index)]
                joints = _write_npz(
                    out_dir / "gestures" / name / f"{stem}.npz", seq.joints, seq.confidence
                )
                out.append((video, joints))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m datasets.synthetic_paired --out DIR``."""
    p = argparse.ArgumentParser(
        prog="python -m datasets.synthetic_paired",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--subjects", type=int, default=6)
    p.add_argument("--per-class", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="video frame side in pixels")
    p.add_argument("--frames", type=int, default=12, help="frames per video")
    p.add_argument("--smoke", action="store_true", help="6 subjects x 1 item per class, 8 frames")
    args = p.parse_args(argv)
    if args.smoke:
        args.subjects, args.per_class, args.frames = 6, 1, 8
    pairs = write_paired_set(
        args.out, args.subjects, args.per_class, args.seed, args.size, args.frames
    )
    print(f"wrote {len(pairs)} paired items under {args.out}/faces and {args.out}/gestures")


if __name__ == "__main__":
    main()
