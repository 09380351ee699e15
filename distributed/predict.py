"""Predict emotions on new videos, image sequences or joint files with a trained checkpoint.

Each PATH is a video, an image-sequence folder, a joint file (.npz/.npy/.csv/.txt or an OpenPose
folder) or a folder of such items (searched recursively). The checkpoint says which branch it
belongs to and how its training data was preprocessed (face detector, crop size, detection
interval, margin; clips C and frames K or the joint representation come from its model
config); exactly that preprocessing is redone here, with the functions the shard job used.

Per item: the predicted class, the class probabilities (of the checkpoint's predicting head,
as ``distributed.evaluate`` computes them) and, for faces, a timeline: the per-clip
probabilities of the TLSTM clip stream with each clip's frame range and time. ``--clips N``
recomputes the timeline with N clips (finer); the prediction itself always uses the
checkpoint's C, so it matches evaluation. Gesture models have no clip stream: empty timeline.

Failures never stop the run: an unreadable file gets an ``error`` entry and the rest continue.
A video in which the detector finds no face is still predicted from the centre crop (the shard
job keeps such videos the same way) and carries a warning. The exit code is 1 only when nothing
could be predicted. More than ``--batch-threshold`` items (or ``--batch``) run as a Ray Data job
(``distributed.inference.batch_predict``); smaller inputs run in this process without Ray. The
Python API
is ``distributed.inference.predictor.Predictor``.

``--device cuda``: in this process the model runs on this machine's GPU; as a Ray Data job
this process (a cluster's head, say) reads the checkpoint on the CPU only and every model actor
asks Ray for a GPU (``--gpus-per-actor 0.5``: two actors share one).

With a face and a body checkpoint (a body model trained on ``--pose mediapipe`` shards), each
redoes its own preprocessing on the same videos (face crops; pose estimation) and the two
probability vectors are fused as ``distributed.fusion`` does, ``p ∝ p_face^w · p_body^(1-w)``
(w from ``--fusion-weight``, the mean w of a ``--fusion-report``, or 0.5); every result keeps
both branches' own predictions under ``branches``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from datasets import storage
from distributed.core import commands
from distributed.inference.batch_predict import actor_resources
from distributed.inference.outputs import predict_local, write_outputs
from distributed.inference.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor", "discover", "main"]


def discover(paths: list[str], branch) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(items [(id, path)], skipped [(path, reason)]) for the CLI's PATH arguments.

    A file is an item whatever its extension (a bad one fails when read, with its reason). A
    folder is one item when it is an image sequence (faces) or an OpenPose folder (joints),
    otherwise a folder of items, searched recursively; there, files of other types are skipped.
    ids are paths relative to the argument, without extension. A folder is never read twice
    (``d/self -> .`` is named as a loop) and a link that leaves the argument's folder is skipped.
    """
    from datasets.sources import link_problem

    exts = tuple(branch.source_extensions)
    items: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []

    def walk(d: Path, root: Path, ancestors: list[Path]) -> None:
        for p in sorted(d.iterdir(), key=lambda q: q.name):
            if p.name.startswith("."):
                continue
            why = link_problem(p, root.resolve(), ancestors)
            if why:
                skipped.append((str(p), why))
                continue
            rel = p.relative_to(root)
            if p.is_dir():
                if branch.is_item_dir(p):
                    items.append((rel.as_posix(), str(p)))
                else:
                    walk(p, root, [*ancestors, p.resolve()])
            elif p.suffix.lower() in exts:
                items.append((rel.with_suffix("").as_posix(), str(p)))
            else:
                skipped.append(
                    (str(p), f"unsupported file type {p.suffix!r} for a {branch.name} model")
                )

    for arg in paths:
        p = Path(arg)
        if not p.exists():
            items.append((p.stem, str(p)))  # reported as unreadable, with the reason, later
        elif p.is_dir() and not branch.is_item_dir(p):
            walk(p, p, [p.resolve()])
        else:
            items.append((p.stem if p.is_file() else p.name, str(p)))
    return items, skipped


@dataclass(frozen=True)
class PredictArgs:
    paths: list[str]
    checkpoint: list[str]
    out: str | None = None
    plot: str | None = None
    clips: int | None = None
    batch: bool = False
    batch_threshold: int = 32
    actors: int = 1
    batch_size: int = 8
    device: str = "cpu"
    gpus_per_actor: float | None = None
    address: str | None = None
    fusion_weight: float | None = None
    fusion_report: str | None = None


def build_parser() -> argparse.ArgumentParser:
    p = commands.Parser(
        prog="python -m distributed.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="videos, folders or joint files")
    p.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        help="model.pt written by train or tune; give a face and a body checkpoint "
        "(twice) to predict with both and fuse them",
    )
    p.add_argument(
        "--fusion-weight",
        type=float,
        default=None,
        help="w of p_face^w * p_body^(1-w) with two checkpoints (default 0.5)",
    )
    p.add_argument("--fusion-report", help="fusion.json of distributed.fusion: its mean w")
    p.add_argument("--out", help="results file: .json (default layout) or .csv (long table)")
    p.add_argument("--plot", help="PNG file (one item) or folder: probabilities over time")
    p.add_argument(
        "--clips", type=commands.count, default=None, help="clips in the timeline (default: C)"
    )
    p.add_argument("--batch", action="store_true", help="always run as a Ray Data job")
    p.add_argument(
        "--batch-threshold",
        type=commands.natural,
        default=32,
        help="use Ray Data from this many items on (default 32)",
    )
    p.add_argument(
        "--actors", type=commands.count, default=1, help="model actors in the Ray Data pool"
    )
    p.add_argument("--batch-size", type=commands.count, default=8)
    p.add_argument("--device", default="cpu", help="where the model runs: cpu or cuda")
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="GPUs each Ray Data model actor asks for with --device cuda (default 1; "
        "a fraction shares a GPU between actors)",
    )
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    return p


def _load(path: str, args: PredictArgs) -> tuple[bytes, Predictor]:
    """The checkpoint's bytes and a predictor on the CPU. This process only reads what it needs
    from it (branch, classes, preprocessing); the model goes to ``--device`` where it runs: in
    this process (:func:`_on_device`) or in Ray Data's actors, so a driver without a GPU (a
    cluster's head) can run a ``--device cuda`` job."""
    try:
        data = storage.read_bytes(path)
        return data, Predictor.from_checkpoint(data, "cpu", args.clips)
    except Exception as err:  # unreadable, not a checkpoint, unknown model, ...
        raise commands.UsageError(f"{path}: cannot load the checkpoint ({err})") from None


def _on_device(predictor: Predictor, device: str) -> Predictor:
    """The same predictor with its model on ``device`` (for prediction in this process)."""
    if torch.device(device) == predictor.device:
        return predictor
    try:
        model = predictor.mf.model.to(device)
    except (RuntimeError, AssertionError) as err:  # torch says AssertionError on a CPU build
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise commands.UsageError(
            f"--device {device}: not usable on this machine ({first})"
        ) from None
    return Predictor(replace(predictor.mf, model=model), device, predictor.timeline_clips)


def _writable_folder(path: str, flag: str) -> None:
    from datasets.records import BadInput

    try:
        storage.ensure_writable_dir(path, f"{flag} folder")
    except BadInput as err:
        raise commands.UsageError(f"{flag} {path}: {err.reason}") from None


def fusion_weight(args: PredictArgs) -> float:
    """w for two checkpoints: --fusion-weight, or the mean w a fusion report chose per fold."""
    if args.fusion_weight is not None:
        if not 0.0 <= args.fusion_weight <= 1.0:
            raise commands.UsageError(
                f"--fusion-weight must be in [0, 1], got {args.fusion_weight}"
            )
        return args.fusion_weight
    if args.fusion_report:
        import json

        try:
            folds = json.loads(storage.read_bytes(args.fusion_report))["folds"]
            return float(sum(f["w"] for f in folds) / len(folds))
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as err:
            raise commands.UsageError(
                f"{args.fusion_report}: not a fusion.json report ({err})"
            ) from None
    return 0.5


def predict_pair(args: PredictArgs) -> tuple[list[dict], Predictor]:
    """A face and a body checkpoint on the same inputs: each redoes its own preprocessing (face
    crops; pose estimation for a body model trained on --pose shards), then the log-linear
    fusion of ``distributed.fusion`` with weight w."""
    from distributed.inference.late_fusion import fuse

    loaded = [_on_device(_load(path, args)[1], args.device) for path in args.checkpoint]
    branches = {p.branch.name for p in loaded}
    if len(branches) != 2:
        raise commands.UsageError(
            "two --checkpoint files must be of two branches (a face and a body "
            f"model), got {sorted(p.branch.name for p in loaded)}"
        )
    face = next(p for p in loaded if p.branch.reads_video)
    body = next(p for p in loaded if p is not face)
    if face.class_names != body.class_names:
        raise commands.UsageError(
            f"the checkpoints' classes differ: {face.class_names} vs {body.class_names}"
        )
    w = fusion_weight(args)
    items, skipped = discover(args.paths, face.branch)
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    a, b = predict_local(face, items), predict_local(body, items)
    out = []
    for ra, rb in zip(a, b):
        if ra["status"] != "ok" or rb["status"] != "ok":
            bad = ra if ra["status"] != "ok" else rb
            out.append({**bad, "branches": {"face": ra, "body": rb}})
            continue
        names = face.class_names
        pf = np.array([[ra["probabilities"][c] for c in names]])
        pb = np.array([[rb["probabilities"][c] for c in names]])
        fused = fuse(pf, pb, w)[0]
        label = names[int(np.argmax(fused))]
        out.append(
            {
                **ra,
                "label": label,
                "probabilities": dict(zip(names, map(float, fused))),
                "fusion_weight": w,
                "branches": {"face": ra, "body": rb},
            }
        )
    return out, face


def predict(args: PredictArgs) -> tuple[list[dict], Predictor]:
    """Every item the arguments name, predicted; returns (results, predictor)."""
    if args.clips is not None and args.clips < 1:
        raise commands.UsageError("--clips must be >= 1")
    if len(args.checkpoint) > 2:
        raise commands.UsageError("give one --checkpoint, or two (a face and a body model)")
    actor_resources(args.device, args.gpus_per_actor)  # a bad --gpus-per-actor fails first
    if args.out:  # outputs are checked before the work, not after it
        commands.check_output_file(args.out, "--out")
    if args.plot and args.plot.endswith(".png"):
        commands.check_output_file(args.plot, "--plot")
    elif args.plot:
        _writable_folder(args.plot, "--plot")
    if len(args.checkpoint) == 2:
        return predict_pair(args)
    data, predictor = _load(args.checkpoint[0], args)
    items, skipped = discover(args.paths, predictor.branch)
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if args.batch or len(items) >= args.batch_threshold:
        from distributed.inference.batch_predict import predict_ray

        results = predict_ray(
            data,
            items,
            clips=args.clips,
            device=args.device,
            actors=args.actors,
            batch_size=args.batch_size,
            address=args.address,
            gpus_per_actor=args.gpus_per_actor,
        )
    else:
        results = predict_local(_on_device(predictor, args.device), items)
    return results, predictor


def main(argv: list[str] | None = None) -> int:
    args = PredictArgs(**vars(build_parser().parse_args(argv)))

    def body() -> int:
        results, predictor = predict(args)
        for r in results:
            if r["status"] == "ok":
                top = r["probabilities"][r["label"]]
                notes = "".join(f"  [warning: {w}]" for w in r["warnings"])
                print(f"{r['id']}: {r['label']} ({top:.2f}){notes}")
            else:
                print(f"error: {r['path']}: {r['error']}", file=sys.stderr)
        write_outputs(results, predictor, ",".join(args.checkpoint), args.out, args.plot)
        n_ok = sum(r["status"] == "ok" for r in results)
        print(f"{n_ok} of {len(results)} items predicted", file=sys.stderr)
        return 0 if n_ok else 1

    return commands.run_stoppable(body, commands.start_over("distributed.predict", argv))


if __name__ == "__main__":
    sys.exit(main())
