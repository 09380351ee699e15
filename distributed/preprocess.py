"""Raw videos / joint files -> Parquet shards, as a streaming Ray Data job.

    python -m distributed.preprocess facial --source DIR --layout {ckplus,list,folders} --out SHARDS
    python -m distributed.preprocess gesture --source DIR --layout {list,folders} --out SHARDS

Items are planned into shards of ``--per-shard`` items (sorted by id, so the plan is stable); one
Ray task turns one planned shard into one Parquet file (temporary name, then rename) plus a small
summary file. Re-running over the same output keeps finished shards and does only the rest. A bad
item is skipped, counted and reported with its reason; the job fails only when nothing usable is
left. The manifest (classes, counts, folds, provenance) is written last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from datasets import folds as folds_mod
from datasets import shards, sources, storage
from datasets.records import BadInput, SourceItem
from distributed.common import git_commit, init_ray, print_table

PLAN = "plan.json"
# Joint files (OpenPose JSON frames come as a folder per sequence).
JOINT_EXTENSIONS = (".json", ".csv", ".txt", ".npy", ".npz")
SUMMARY_SUFFIX = ".summary.json"


@dataclass(frozen=True)
class FacialOptions:
    """Per-item facial preprocessing settings (recorded in the manifest and checkpoints)."""

    size: int = 224
    detector: str = "haar"
    every: int = 5
    margin: float = 0.2
    max_frames: int | None = None


@dataclass(frozen=True)
class GestureOptions:
    """Per-item gesture preprocessing settings."""

    fill_missing: bool = True


def process_facial_item(
    item: SourceItem, label: int, opts: FacialOptions, detector
) -> shards.FacialRow:
    """Decode, detect, crop and resize one video into a shard row (raises BadInput)."""
    from datasets.faces import face_track
    from datasets.video import read_frames

    frames = read_frames(item.path, max_frames=opts.max_frames)
    track = face_track(frames, detector, opts.size, every=opts.every, margin=opts.margin)
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
    """Read one joint file, fill missing joints, into a shard row (raises BadInput)."""
    from datasets.joints import fill_missing, read_joints

    seq = read_joints(item.path)
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


def run_shard(task: dict) -> dict:
    """Ray Data task: process one planned shard and write it; returns a one-row summary."""
    from datasets.faces import make_detector

    kind, out, index = task["kind"], task["out"], int(task["shard"])
    items = [SourceItem(**d) for d in json.loads(task["items"])]
    classes = json.loads(task["classes"])
    opts = json.loads(task["options"])
    label_of = {name: i for i, name in enumerate(classes)}
    detector = make_detector(opts["detector"]) if kind == "facial" else None
    rows, errors, centre = [], [], []
    for item in items:
        try:
            if kind == "facial":
                row = process_facial_item(
                    item, label_of[item.label], FacialOptions(**opts), detector
                )
                if row.centre_cropped:
                    centre.append(item.path)
            else:
                row = process_gesture_item(item, label_of[item.label], GestureOptions(**opts))
            rows.append(row)
        except BadInput as e:
            errors.append([e.path, e.reason])
        except Exception as e:  # one bad item never kills the job: count it, report it
            errors.append([item.path, f"{type(e).__name__}: {e}"])
    if rows:
        table = shards.facial_table(rows) if kind == "facial" else shards.gesture_table(rows)
        shards.write_shard(table, shards.shard_path(out, index))
    summary = {"shard": index, "written": len(rows), "errors": errors, "centre_cropped": centre}
    # The summary is written last: its presence marks the shard as finished for a resume.
    storage.atomic_write_bytes(_summary_path(out, index), json.dumps(summary).encode())
    return {"shard": index, "written": len(rows), "failed": len(errors)}


def _summary_path(out: str, index: int) -> str:
    return shards.shard_path(out, index) + SUMMARY_SUFFIX


def scan(kind: str, source: str, layout: str, labels: str | None, subject_pattern: str | None):
    """Find the items of a source folder: (items, skipped [(path, reason)])."""
    if kind == "facial":
        from datasets.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

        extensions = tuple(VIDEO_EXTENSIONS) + tuple(IMAGE_EXTENSIONS)
    else:
        extensions = JOINT_EXTENSIONS
    if layout == "ckplus":
        if kind != "facial":
            raise BadInput(source, "the ckplus layout holds image sequences, not joint files")
        return sources.scan_ckplus(source)
    if layout == "list":
        if not labels:
            raise BadInput(source, "--layout list needs --labels FILE")
        return sources.scan_list(source, labels)
    kwargs = {"subject_pattern": subject_pattern} if subject_pattern else {}
    return sources.scan_folders(source, extensions, **kwargs)


def plan_shards(items: list[SourceItem], per_shard: int) -> list[list[SourceItem]]:
    ordered = sorted(items, key=lambda it: it.id)
    return [ordered[i : i + per_shard] for i in range(0, len(ordered), per_shard)]


def _check_plan(out: str, plan_doc: dict) -> None:
    """Refuse to resume into an output made from different items or options."""
    path = storage.join(out, PLAN)
    if storage.exists(path):
        old = json.loads(storage.read_bytes(path))
        if old != plan_doc:
            raise BadInput(
                out,
                "holds shards planned from other items or options; use a new --out "
                "(or delete this folder) to start over",
            )
    else:
        storage.atomic_write_bytes(path, json.dumps(plan_doc, sort_keys=True).encode())


def make_folds(ids, subjects, labels, outer: int, inner: int, seed: int) -> dict:
    """Nested, subject-disjoint, class-stratified folds as lists of ids (for the manifest)."""
    ids = np.asarray(ids)
    nested = folds_mod.nested_splits(list(subjects), list(labels), outer, inner, seed)
    return {
        "seed": seed,
        "outer": [
            {
                "train": sorted(ids[f.train].tolist()),
                "test": sorted(ids[f.test].tolist()),
                "inner": [
                    {"train": sorted(ids[i.train].tolist()), "val": sorted(ids[i.val].tolist())}
                    for i in f.inner
                ],
            }
            for f in nested
        ],
    }


def preprocess(args: argparse.Namespace) -> int:
    """Run the whole job; returns the process exit code."""
    t0 = time.time()
    kind = args.kind
    items, skipped = scan(kind, args.source, args.layout, args.labels, args.subject_pattern)
    skipped = [list(s) for s in skipped]
    if not items:
        print(f"error: {args.source}: no usable items ({len(skipped)} skipped)", file=sys.stderr)
        for path, reason in skipped:
            print(f"  skipped {path}: {reason}", file=sys.stderr)
        return 2
    classes = list(sources.class_names_for(items))
    if kind == "facial":
        options = asdict(
            FacialOptions(args.size, args.detector, args.every, args.margin, args.max_frames)
        )
    else:
        options = asdict(GestureOptions())
    plan = plan_shards(items, args.per_shard)
    plan_doc = {
        "kind": kind,
        "classes": classes,
        "options": options,
        "shards": [[it.id for it in group] for group in plan],
    }
    storage.makedirs(args.out)
    storage.remove_stale_temporaries(args.out)
    _check_plan(args.out, plan_doc)

    done = {i for i in range(len(plan)) if storage.exists(_summary_path(args.out, i))}
    todo = [
        {
            "kind": kind,
            "out": args.out,
            "shard": i,
            "items": json.dumps([asdict(it) for it in group]),
            "classes": json.dumps(classes),
            "options": json.dumps(options),
        }
        for i, group in enumerate(plan)
        if i not in done
    ]
    print(f"{len(items)} items in {len(plan)} shards; {len(done)} already done, {len(todo)} to do")
    if todo:
        ray = init_ray(args.address, args.num_cpus)
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        # One task per planned shard; outputs are tiny summaries, so memory stays bounded by the
        # shards in flight, whatever the dataset size. Ray Data draws the progress bar.
        for _ in ds.map(run_shard, num_cpus=1, max_retries=2).iter_rows():
            pass

    summaries = [
        json.loads(storage.read_bytes(_summary_path(args.out, i))) for i in range(len(plan))
    ]
    failed = skipped + [e for s in summaries for e in s["errors"]]
    centre = [p for s in summaries for p in s["centre_cropped"]]
    written = sum(s["written"] for s in summaries)
    if written == 0:
        print(f"error: {args.source}: nothing usable was written", file=sys.stderr)
        _print_failures(failed)
        return 1

    extra_cols = ["n_joints"] if kind == "gesture" else []
    table = shards.read_table(args.out, columns=["id", "subject", "label", *extra_cols])
    ids = table["id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"{args.out}: duplicate ids across shards (a torn earlier run?)")
    subjects, labels = table["subject"].to_pylist(), table["label"].to_pylist()
    folds = make_folds(ids, subjects, labels, args.folds, args.inner_folds, args.seed)
    manifest = {
        "kind": kind,
        "num_joints": _single_joint_count(table) if kind == "gesture" else None,
        "classes": classes,
        "options": options,
        "source": str(args.source),
        "layout": args.layout,
        "counts": {
            "read": len(items) + len(skipped),
            "written": written,
            "skipped": len(failed),
            "centre_cropped": len(centre),
            "per_class": dict(Counter(classes[i] for i in labels)),
            "subjects": len(set(subjects)),
        },
        "skipped": failed,
        "centre_cropped": centre,
        "folds": folds,
        "git_commit": git_commit(),
    }
    shards.write_manifest(args.out, manifest)
    _print_summary(manifest, time.time() - t0)
    return 0


def _single_joint_count(table) -> int:
    counts = set(table["n_joints"].to_pylist())
    if len(counts) != 1:
        raise BadInput(
            "(shards)",
            f"joint files with different joint counts {sorted(counts)}: "
            "preprocess one joint layout per shard folder",
        )
    return counts.pop()


def _print_failures(failed, file=None) -> None:
    for path, reason in failed:
        print(f"  skipped {path}: {reason}", file=file or sys.stderr)


def _print_summary(manifest: dict, seconds: float) -> None:
    c = manifest["counts"]
    print(f"\n{manifest['kind']} shards written in {seconds:.1f} s")
    print_table(
        [
            ("items read", c["read"]),
            ("rows written", c["written"]),
            ("skipped", c["skipped"]),
            ("centre-cropped (no face found)", c["centre_cropped"]),
            ("subjects", c["subjects"]),
        ]
        + [(f"class {k}", v) for k, v in sorted(c["per_class"].items())],
        ("", "count"),
    )
    if manifest["skipped"]:
        print("\nskipped items:")
        _print_failures(manifest["skipped"], file=sys.stdout)
    if manifest["centre_cropped"]:
        print("\nno face found (centre crop used):")
        for p in manifest["centre_cropped"]:
            print(f"  {p}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distributed.preprocess",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=["facial", "gesture"])
    p.add_argument("--source", required=True, help="source folder")
    p.add_argument("--layout", choices=["ckplus", "list", "folders"], default="folders")
    p.add_argument("--labels", help="label list for --layout list: '<relative path> <Label>' lines")
    p.add_argument("--out", required=True, help="output shard folder (path or URI)")
    p.add_argument("--size", type=int, default=224, help="face crop size S (facial)")
    p.add_argument("--detector", default="haar", help="face detector: haar or none (facial)")
    p.add_argument("--every", type=int, default=5, help="run the detector every N frames")
    p.add_argument("--margin", type=float, default=0.2, help="crop margin around the face box")
    p.add_argument("--max-frames", type=int, default=None, help="keep at most N frames per video")
    p.add_argument("--per-shard", type=int, default=8, help="items per shard (and per Ray task)")
    p.add_argument("--folds", type=int, default=5, help="outer subject-independent folds")
    p.add_argument(
        "--inner-folds", type=int, default=3, help="inner validation folds per outer fold"
    )
    p.add_argument("--seed", type=int, default=0, help="fold seed")
    p.add_argument("--subject-pattern", help="regex whose group 1 is the subject (folders layout)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray instance")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return preprocess(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
