"""Predict emotions on new videos, image sequences or joint files with a trained checkpoint.

    python -m distributed.predict PATH... --checkpoint CKPT [--out FILE.json|FILE.csv]
        [--plot PNG_OR_DIR] [--batch] [--clips N] [--actors N] [--device cpu]

Each PATH is a video, an image-sequence folder, a joint file (.npz/.npy/.csv/.txt or an OpenPose
folder) or a folder of such items (searched recursively). The checkpoint says which kind it takes
and how its training data was preprocessed (``blob["preprocessing"]``: face detector, crop size,
detection interval, margin, clips C and frames K; or the joint representation); exactly that
preprocessing is redone here, with the same functions the shard job used.

Per item: the predicted class, the class probabilities (of the checkpoint's predicting head,
the fused score by default, as ``distributed.evaluate`` computes them) and, for faces, a
timeline: the per-clip probabilities of the TLSTM clip stream (softmax(clip_fc(clip feature)))
with each clip's frame range and time.
``--clips N`` recomputes the timeline with N clips (finer); the prediction itself always uses the
checkpoint's C, so it matches evaluation. Gesture models have no clip stream: empty timeline.

Failures never stop the run: an unreadable file gets an ``error`` entry and the rest continue.
A video in which the detector finds no face is still predicted from the centre crop (the shard
job keeps such videos the same way) and carries a warning. The exit code is 1 only when nothing
could be predicted. More than ``--batch-threshold`` items (or ``--batch``) run as a Ray Data job:
decoding/detection in parallel tasks, the model in an actor pool (``map_batches`` with a callable
class), with Ray Data's progress bar; smaller inputs run in this process without Ray.

Python API (no Ray)::

    p = Predictor.from_checkpoint("model.pt")
    p.predict_path("clip.avi").label
    p.predict_frames(frames_uint8_nhw3)  # or p.predict_joints(joints_tjd) for gesture models
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from datasets import storage
from datasets.clips import clip_indices, sample_clips
from datasets.records import BadInput, JointSequence, SourceItem
from distributed.preprocess import (
    JOINT_EXTENSIONS,
    FacialOptions,
    GestureOptions,
    process_facial_item,
    process_gesture_item,
)
from distributed.steps import head_probs, load_model_checkpoint, model_inputs, predict_probs


@dataclass(frozen=True)
class ClipProbs:
    """One clip of the timeline: its frame segment (inclusive), the frames fed, times, probs."""

    index: int
    start_frame: int
    end_frame: int
    frames: tuple[int, ...]
    start_s: float | None
    end_s: float | None
    probabilities: dict[str, float]


@dataclass(frozen=True)
class Prediction:
    """What the model says about one item. ``face_fraction`` is None for joint input."""

    source: str
    label: str
    probabilities: dict[str, float]
    timeline: tuple[ClipProbs, ...] = ()
    face_fraction: float | None = None
    warnings: tuple[str, ...] = ()
    n_frames: int = 0

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Prepared:
    """An item after the deterministic preprocessing, before the model (numpy only).

    data: facial (n, S, S, 3) uint8 face crops; gesture (T, J, 2) float32 filled joints.
    """

    source: str
    data: np.ndarray
    fps: float | None = None
    face_fraction: float | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _options(cls, pre: dict):
    return cls(**{f.name: pre[f.name] for f in fields(cls) if f.name in pre})


def video_fps(path: str) -> float | None:
    """Frames per second a video container declares (None for folders, images, unknown)."""
    p = Path(path)
    if not p.is_file():
        return None
    import cv2

    cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if np.isfinite(fps) and fps > 0 else None


def prepare_path(kind: str, pre: dict, path: str, detector=None) -> Prepared:
    """Preprocess one input exactly as the shard job did (raises BadInput)."""
    item = SourceItem(id=Path(path).stem, subject="", label="", path=str(path))
    if kind == "gesture":
        row = process_gesture_item(item, 0, _options(GestureOptions, pre))
        return Prepared(str(path), np.ascontiguousarray(row.joints[..., :2], np.float32))
    if detector is None:
        from datasets.faces import make_detector

        detector = make_detector(pre.get("detector", "haar"))
    row = process_facial_item(item, 0, _options(FacialOptions, pre), detector)
    return Prepared(
        str(path), row.frames, video_fps(path), row.face_fraction, _face_warnings(row, pre)
    )


def _face_warnings(track, pre: dict) -> tuple[str, ...]:
    if track.centre_cropped:
        name = pre.get("detector", "haar")
        return (f"no face found ({name} detector): predicted from the centre crop",)
    if track.face_fraction < 0.5:
        return (f"face found in only {track.face_fraction:.0%} of the checked frames",)
    return ()


class Predictor:
    """A loaded checkpoint plus the preprocessing it was trained with. No Ray involved."""

    def __init__(self, model, cfg, blob: dict, device: str = "cpu", clips: int | None = None):
        self.model, self.cfg, self.blob = model, cfg, blob
        self.device = torch.device(device)
        self.kind = cfg.kind
        self.class_names = list(blob["class_names"])
        self.pre = dict(blob.get("preprocessing") or {})
        self.clips = int(self.pre.get("clips", cfg.clips))
        self.frames = int(self.pre.get("frames", cfg.frames))
        self.timeline_clips = int(clips) if clips else self.clips
        self._detector = None

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu", clips: int | None = None) -> Predictor:
        """Load a model file written by train/tune (a path, URI or the file's bytes)."""
        data = path if isinstance(path, bytes) else storage.read_bytes(str(path))
        model, cfg, blob = load_model_checkpoint(data, device)
        return cls(model, cfg, blob, device, clips)

    @property
    def detector(self):
        if self._detector is None:
            from datasets.faces import make_detector

            self._detector = make_detector(self.pre.get("detector", "haar"))
        return self._detector

    # ------------------------------------------------------------ preparation
    def prepare_path(self, path: str) -> Prepared:
        return prepare_path(
            self.kind, self.pre, path, self.detector if self.kind == "facial" else None
        )

    def prepare_frames(self, frames: np.ndarray, already_cropped: bool = False) -> Prepared:
        """(n, H, W, 3) uint8 RGB frames -> face crops (tracked here unless already cropped)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be (n, H, W, 3) uint8, got {frames.dtype} {frames.shape}"
            )
        size = int(self.pre.get("size", 224))
        if already_cropped:
            import cv2

            if frames.shape[1:3] != (size, size):
                frames = np.stack(
                    [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
                )  # (n, S, S, 3)
            return Prepared("<array>", frames, None, None, ())
        from datasets.faces import face_track

        opts = _options(FacialOptions, self.pre)
        track = face_track(frames, self.detector, size, every=opts.every, margin=opts.margin)
        return Prepared(
            "<array>", track.frames, None, track.face_fraction, _face_warnings(track, self.pre)
        )

    def prepare_joints(self, joints: np.ndarray) -> Prepared:
        """(T, J, D) joints, NaN where missing -> filled (T, J, 2) as the shard job stores them."""
        from datasets.joints import fill_missing

        joints = np.asarray(joints, np.float32)
        conf = np.isfinite(joints).all(axis=-1).astype(np.float32)  # (T, J)
        seq = JointSequence(joints, conf, "<array>", "array")
        if _options(GestureOptions, self.pre).fill_missing:
            seq = fill_missing(seq)
        return Prepared("<array>", np.ascontiguousarray(seq.joints[..., :2]))

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_prepared(self, items: list[Prepared]) -> list[Prediction]:
        """One batched forward pass over prepared items (all of this predictor's kind)."""
        if not items:
            return []
        if self.kind == "gesture":
            probs = self._gesture_probs([it.data for it in items])
            return [self._prediction(it, p, ()) for it, p in zip(items, probs)]
        x = self._clips_tensor([it.data for it in items], self.clips)  # (B, C, K, 3, S, S)
        feats = self.model.forward_features(x)  # (B, C, 512)
        probs = head_probs(self.model.forward_head(feats), self.cfg.head).cpu().numpy()
        if self.timeline_clips != self.clips:
            x = self._clips_tensor([it.data for it in items], self.timeline_clips)
            feats = self.model.forward_features(x)  # (B, N, 512)
        # The TLSTM clip stream: per-clip softmax(clip_fc(feature)); dropout is off in eval mode.
        clip_probs = self.model.head.clip_fc(feats).softmax(dim=-1).cpu().numpy()  # (B, N, cls)
        return [
            self._prediction(it, p, self._timeline(it, cp))
            for it, p, cp in zip(items, probs, clip_probs)
        ]

    def _clips_tensor(self, videos: list[np.ndarray], clips: int) -> torch.Tensor:
        x = torch.from_numpy(np.stack([sample_clips(v, clips, self.frames) for v in videos]))
        # (B, C, K, S, S, 3) -> (B, C, K, 3, S, S), channels-last strides as in FacialCollate
        return x.permute(0, 1, 2, 5, 3, 4).to(self.device)

    def _gesture_probs(self, seqs: list[np.ndarray]) -> np.ndarray:
        lengths = np.array([s.shape[0] for s in seqs], np.int64)
        padded = np.zeros((len(seqs), lengths.max(), seqs[0].shape[1], 2), np.float32)
        for i, s in enumerate(seqs):
            padded[i, : s.shape[0]] = s  # (B, Tmax, J, 2), zero-padded like GestureCollate
        batch = {"joints": torch.from_numpy(padded), "lengths": torch.from_numpy(lengths)}
        x = model_inputs(self.cfg, batch, self.device)
        return predict_probs(self.cfg, self.model, x).cpu().numpy()

    def _timeline(self, item: Prepared, clip_probs: np.ndarray) -> tuple[ClipProbs, ...]:
        n, c = item.data.shape[0], clip_probs.shape[0]
        idx = clip_indices(n, c, self.frames)  # (C, K), the deterministic evaluation clips
        seg = n // c
        out = []
        for i in range(c):
            if n > c * self.frames:
                start, end = i * seg, (n - 1 if i == c - 1 else (i + 1) * seg - 1)
            else:
                start, end = int(idx[i].min()), int(idx[i].max())
            fps = item.fps
            out.append(
                ClipProbs(
                    i,
                    start,
                    end,
                    tuple(int(v) for v in idx[i]),
                    None if fps is None else start / fps,
                    None if fps is None else (end + 1) / fps,
                    dict(zip(self.class_names, (float(v) for v in clip_probs[i]))),
                )
            )
        return tuple(out)

    def _prediction(self, item: Prepared, probs: np.ndarray, timeline) -> Prediction:
        return Prediction(
            source=item.source,
            label=self.class_names[int(np.argmax(probs))],
            probabilities=dict(zip(self.class_names, (float(v) for v in probs))),
            timeline=timeline,
            face_fraction=item.face_fraction,
            warnings=tuple(item.warnings),
            n_frames=int(item.data.shape[0]),
        )

    # ------------------------------------------------------------ convenience
    def predict_path(self, path: str) -> Prediction:
        """Preprocess and predict one file or folder (raises BadInput when it cannot be read)."""
        return self.predict_prepared([self.prepare_path(path)])[0]

    def predict_frames(self, frames: np.ndarray, already_cropped: bool = False) -> Prediction:
        """Predict from (n, H, W, 3) uint8 RGB frames (facial checkpoints)."""
        if self.kind != "facial":
            raise ValueError("predict_frames needs a facial checkpoint; use predict_joints")
        return self.predict_prepared([self.prepare_frames(frames, already_cropped)])[0]

    def predict_joints(self, joints: np.ndarray) -> Prediction:
        """Predict from (T, J, D) joints with NaN for missing ones (gesture checkpoints)."""
        if self.kind != "gesture":
            raise ValueError("predict_joints needs a gesture checkpoint; use predict_frames")
        return self.predict_prepared([self.prepare_joints(joints)])[0]


# ---------------------------------------------------------------- inputs
def discover(paths: list[str], kind: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(items [(id, path)], skipped [(path, reason)]) for the CLI's PATH arguments.

    A file is an item whatever its extension (a bad one fails when read, with its reason). A
    folder is one item when it is an image sequence (faces) or an OpenPose folder (joints),
    otherwise a folder of items, searched recursively; there, files of other types are skipped.
    ids are paths relative to the argument, without extension.
    """
    from datasets.video import VIDEO_EXTENSIONS, list_images

    exts = VIDEO_EXTENSIONS if kind == "facial" else JOINT_EXTENSIONS

    def is_item_dir(d: Path) -> bool:
        return bool(list_images(d)) if kind == "facial" else any(d.glob("*_keypoints.json"))

    items: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []

    def walk(d: Path, root: Path) -> None:
        for p in sorted(d.iterdir(), key=lambda q: q.name):
            if p.name.startswith("."):
                continue
            rel = p.relative_to(root)
            if p.is_dir():
                if is_item_dir(p):
                    items.append((rel.as_posix(), str(p)))
                else:
                    walk(p, root)
            elif p.suffix.lower() in exts:
                items.append((rel.with_suffix("").as_posix(), str(p)))
            else:
                skipped.append((str(p), f"unsupported file type {p.suffix!r} for a {kind} model"))

    for arg in paths:
        p = Path(arg)
        if not p.exists():
            items.append((p.stem, str(p)))  # reported as unreadable, with the reason, later
        elif p.is_dir() and not is_item_dir(p):
            walk(p, p)
        else:
            items.append((p.stem if p.is_file() else p.name, str(p)))
    return items, skipped


def _ok(item_id: str, path: str, pred: Prediction) -> dict:
    return {"id": item_id, "path": path, "status": "ok", "error": None, **pred.to_dict()}


def _failed(item_id: str, path: str, reason: str) -> dict:
    return {"id": item_id, "path": path, "status": "error", "error": reason}


def _reason(err: Exception) -> str:
    return err.reason if isinstance(err, BadInput) else f"{type(err).__name__}: {err}"


def predict_local(predictor: Predictor, items: list[tuple[str, str]]) -> list[dict]:
    """Predict items one by one in this process; a failing item becomes an error entry."""
    out = []
    for item_id, path in items:
        try:
            out.append(_ok(item_id, path, predictor.predict_path(path)))
        except Exception as err:  # one bad input never stops the others
            out.append(_failed(item_id, path, _reason(err)))
    return out


# ---------------------------------------------------------------- Ray Data batch inference
def _prepare_batch(batch: dict, kind: str, pre: dict) -> dict:
    """Ray Data task: decode + detect + crop (no model). Arrays travel as bytes + shape."""
    detector = None
    if kind == "facial":
        from datasets.faces import make_detector

        detector = make_detector(pre.get("detector", "haar"))
    cols = {k: [] for k in ("order", "id", "path", "error", "data", "shape", "meta")}
    for order, item_id, path in zip(batch["order"], batch["id"], batch["path"]):
        error, data, shape, meta = "", b"", "[]", "{}"
        try:
            prep = prepare_path(kind, pre, str(path), detector)
            data, shape = prep.data.tobytes(), json.dumps(list(prep.data.shape))
            meta = json.dumps(
                {
                    "fps": prep.fps,
                    "face_fraction": prep.face_fraction,
                    "warnings": list(prep.warnings),
                }
            )
        except Exception as err:
            error = _reason(err)
        for k, v in zip(cols, (int(order), str(item_id), str(path), error, data, shape, meta)):
            cols[k].append(v)
    return {k: np.array(v, dtype=object) if k == "data" else np.array(v) for k, v in cols.items()}


class ModelActor:
    """Ray Data ``map_batches`` callable class: the model is loaded once per actor."""

    def __init__(self, checkpoint, clips: int | None, device: str):
        import ray

        data = ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
        torch.set_num_threads(1)
        self.predictor = Predictor.from_checkpoint(data, device, clips)

    def __call__(self, batch: dict) -> dict:
        dtype = np.uint8 if self.predictor.kind == "facial" else np.float32
        ready, results = [], []
        for i in range(len(batch["id"])):
            if batch["error"][i]:
                continue
            meta = json.loads(batch["meta"][i])
            arr = np.frombuffer(batch["data"][i], dtype).reshape(json.loads(batch["shape"][i]))
            ready.append(
                (
                    i,
                    Prepared(
                        str(batch["path"][i]),
                        arr,
                        meta["fps"],
                        meta["face_fraction"],
                        tuple(meta["warnings"]),
                    ),
                )
            )
        preds = dict(
            zip([i for i, _ in ready], self.predictor.predict_prepared([p for _, p in ready]))
        )
        for i in range(len(batch["id"])):
            item_id, path = str(batch["id"][i]), str(batch["path"][i])
            if i in preds:
                results.append(json.dumps(_ok(item_id, path, preds[i])))
            else:
                results.append(json.dumps(_failed(item_id, path, str(batch["error"][i]))))
        return {"order": batch["order"], "result": np.array(results)}


def predict_ray(
    checkpoint: bytes,
    items: list[tuple[str, str]],
    *,
    clips: int | None = None,
    device: str = "cpu",
    actors: int = 1,
    batch_size: int = 8,
    address: str | None = None,
) -> list[dict]:
    """The same predictions as :func:`predict_local`, as a Ray Data batch-inference job."""
    from distributed.common import init_ray

    ray = init_ray(address)
    model, cfg, blob = load_model_checkpoint(checkpoint, "cpu")
    del model
    rows = [{"order": i, "id": item_id, "path": path} for i, (item_id, path) in enumerate(items)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * actors)))
    ds = ds.map_batches(
        _prepare_batch,
        fn_kwargs={"kind": cfg.kind, "pre": blob["preprocessing"]},
        batch_size=batch_size,
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        ModelActor,
        fn_constructor_kwargs={"checkpoint": ray.put(checkpoint), "clips": clips, "device": device},
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=1,
    )
    results = sorted(ds.iter_rows(), key=lambda r: int(r["order"]))
    return [json.loads(r["result"]) for r in results]


# ---------------------------------------------------------------- outputs
CSV_FIELDS = ("id", "path", "status", "error", "clip", "start_frame", "end_frame", "start_s",
              "end_s", "label", "face_fraction", "warnings")  # fmt: skip


def results_csv(results: list[dict], class_names: list[str]) -> str:
    """Long CSV: per item one ``clip=all`` row, then one row per timeline clip."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, [*CSV_FIELDS, *[f"p_{c}" for c in class_names]], restval="")
    w.writeheader()
    for r in results:
        row = {"id": r["id"], "path": r["path"], "status": r["status"], "clip": "all"}
        if r["status"] != "ok":
            w.writerow({**row, "error": r["error"]})
            continue
        probs = {f"p_{c}": r["probabilities"][c] for c in class_names}
        extra = {"face_fraction": r["face_fraction"], "warnings": " | ".join(r["warnings"])}
        span = {"start_frame": 0, "end_frame": r["n_frames"] - 1}
        w.writerow({**row, **span, "label": r["label"], **extra, **probs})
        for clip in r["timeline"]:
            p = clip["probabilities"]
            keys = ("start_frame", "end_frame", "start_s", "end_s")
            w.writerow(
                {**row, "clip": clip["index"], **{k: clip[k] for k in keys},
                 "label": max(p, key=p.get), **{f"p_{c}": p[c] for c in class_names}}
            )  # fmt: skip
    return buf.getvalue()


def timeline_png(result: dict, class_names: list[str]) -> bytes:
    """Emotion probabilities over time (clip stream, one line per class) + the final scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(3, 1))
    tl = result["timeline"]
    if tl:
        timed = all(c["start_s"] is not None for c in tl)
        lo = [c["start_s"] if timed else c["start_frame"] for c in tl]
        hi = [c["end_s"] if timed else c["end_frame"] + 1 for c in tl]
        mid = [(a + b) / 2 for a, b in zip(lo, hi)]
        for name in class_names:
            ax.plot(mid, [c["probabilities"][name] for c in tl], marker="o", label=name)
        for a in lo[1:]:
            ax.axvline(a, color="0.85", lw=0.8, zorder=0)
        ax.set_xlim(lo[0], hi[-1])
        ax.set_xlabel("time (s)" if timed else "frame")
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no timeline (gesture model)", ha="center", va="center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("clip probability")
    ax.set_title(f"{result['id']}: clip stream, {len(tl)} clips", fontsize=9)
    probs = [result["probabilities"][c] for c in class_names]
    bx.barh(range(len(class_names)), probs, color="tab:blue")
    bx.set_yticks(range(len(class_names)), class_names, fontsize=8)
    bx.set_xlim(0, 1)
    bx.set_title(f"prediction: {result['label']}", fontsize=9)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()


def write_outputs(results: list[dict], blob: dict, args) -> None:
    names = list(blob["class_names"])
    if args.out:
        if args.out.endswith(".csv"):
            storage.atomic_write_bytes(args.out, results_csv(results, names).encode())
        else:
            doc = {
                "checkpoint": args.checkpoint,
                "kind": blob["config"]["kind"],
                "classes": names,
                "preprocessing": blob["preprocessing"],
                "items": results,
            }
            storage.atomic_write_bytes(args.out, json.dumps(doc, indent=2).encode())
    if args.plot:
        good = [r for r in results if r["status"] == "ok"]
        single = args.plot.endswith(".png") and len(good) == 1
        for r in good:
            safe = r["id"].replace("/", "__") or "item"
            target = args.plot if single else storage.join(args.plot, f"{safe}.png")
            storage.atomic_write_bytes(target, timeline_png(r, names))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distributed.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="videos, folders or joint files")
    p.add_argument("--checkpoint", required=True, help="model.pt written by train or tune")
    p.add_argument("--out", help="results file: .json (default layout) or .csv (long table)")
    p.add_argument("--plot", help="PNG file (one item) or folder: probabilities over time")
    p.add_argument("--clips", type=int, default=None, help="clips in the timeline (default: C)")
    p.add_argument("--batch", action="store_true", help="always run as a Ray Data job")
    p.add_argument(
        "--batch-threshold",
        type=int,
        default=32,
        help="use Ray Data from this many items on (default 32)",
    )
    p.add_argument("--actors", type=int, default=1, help="model actors in the Ray Data pool")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clips is not None and args.clips < 1:
        print("error: --clips must be >= 1", file=sys.stderr)
        return 2
    try:
        data = storage.read_bytes(args.checkpoint)
        predictor = Predictor.from_checkpoint(data, args.device, args.clips)
    except Exception as err:  # unreadable, not a checkpoint, unknown model, ...
        print(f"error: {args.checkpoint}: cannot load the checkpoint ({err})", file=sys.stderr)
        return 2
    items, skipped = discover(args.paths, predictor.kind)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if args.batch or len(items) >= args.batch_threshold:
        results = predict_ray(
            data,
            items,
            clips=args.clips,
            device=args.device,
            actors=args.actors,
            batch_size=args.batch_size,
            address=args.address,
        )
    else:
        results = predict_local(predictor, items)
    for r in results:
        if r["status"] == "ok":
            top = r["probabilities"][r["label"]]
            notes = "".join(f"  [warning: {w}]" for w in r["warnings"])
            print(f"{r['id']}: {r['label']} ({top:.2f}){notes}")
        else:
            print(f"error: {r['path']}: {r['error']}", file=sys.stderr)
    write_outputs(results, predictor.blob, args)
    n_ok = sum(r["status"] == "ok" for r in results)
    print(f"{n_ok} of {len(results)} items predicted", file=sys.stderr)
    return 0 if n_ok else 1


if __name__ == "__main__":
    sys.exit(main())
