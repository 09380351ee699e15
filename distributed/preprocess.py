"""Raw videos / joint files -> Parquet shards, as a job of Ray tasks.

BRANCH is facial (videos or image sequences; ckplus is facial only), gesture (joint files), or
a branch of your own named MODULE:NAME.

The per-item work (decode, detect, crop; read and fill joints) is the branch's own function
(``branches/<branch>/data.py``); this module is the Ray job around it. Items are planned into
shards of ``--per-shard`` items (sorted by id, so the plan is stable); one Ray task turns one
planned shard into one Parquet file (temporary name, then rename) plus a small summary file
(``distributed/preprocessing/tasks.py``). Re-running over the same output keeps finished shards
and does only the rest; SIGINT (Ctrl-C) or SIGTERM stops the job, keeps its finished shards and
names, in one line, the command that continues (exit 130 or 143). A bad item is skipped, counted
and reported with its reason (so is a joint file of another layout than the set's majority); the
job fails only when nothing usable is left. Fewer than two classes, and flags that make no
sense, are refused before any work. The manifest (classes, counts, folds, provenance) is written
last; a re-run keeps its default protocol.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

from branches import BRANCH_HELP, Branch, branch_arg, get_branch
from branches.gesture.data import JOINT_EXTENSIONS
from datasets import shards, sources, storage
from datasets.layouts import LAYOUTS, RELEASES, VIDEO_ONLY
from datasets.manifest import Counts, Manifest, default_to_keep, write_manifest
from datasets.protocols import ProtocolError
from datasets.records import BadInput
from distributed.core import commands
from distributed.core.console import Bar
from distributed.core.runtime import git_commit, init_ray, print_table
from distributed.folds import (
    FoldsArgs,
    check_fold_flags,
    describe,
    print_warnings,
    rewrite_hint,
    write_folds,
)
from distributed.preprocessing.tasks import (
    check_plan,
    finished_shards,
    plan_shards,
    run_tasks,
    summary_path,
)


@dataclass(frozen=True)
class PreprocessArgs:
    """The parsed command line of ``distributed.preprocess``."""

    branch: str
    source: str
    out: str
    layout: str = "folders"
    labels: str | None = None
    size: int = 224
    detector: str = "haar"
    every: int = 5
    margin: float = 0.2
    align: bool = False
    max_frames: int | None = None
    pose: str | None = None
    per_shard: int = 8
    folds: int = 5
    inner_folds: int = 3
    seed: int = 0
    fold_lists: str | None = None
    classes: str | None = None
    subject_pattern: str | None = None
    address: str | None = None
    num_cpus: float | None = None

    def options(self, branch: Branch):
        """The branch's typed preprocessing options from the flags it knows."""
        from dataclasses import fields

        names = {f.name for f in fields(branch.options_type)}
        try:
            return branch.options_type(**{k: v for k, v in asdict(self).items() if k in names})
        except ValueError as err:
            raise commands.UsageError(str(err)) from None


@dataclass(frozen=True)
class SourceScan:
    """What a source folder holds: usable items, skipped entries, the class order when the
    layout fixes it, and the protocol preprocessing writes by default."""

    items: list
    skipped: list
    classes: tuple[str, ...] | None
    protocol: str


def scan(branch: Branch, args: PreprocessArgs) -> SourceScan:
    """Find the items of a source folder."""
    source, layout = args.source, args.layout
    if layout in VIDEO_ONLY and not branch.reads_video:
        raise BadInput(
            source, f"the {layout} layout holds videos / image sequences, not {branch.name} inputs"
        )
    if layout in RELEASES:
        found = RELEASES[layout].scan(source)
        return SourceScan(list(found.items), list(found.skipped), tuple(found.classes), layout)
    protocol = "lists" if args.fold_lists else "subjects"
    if layout == "ckplus":
        items, skipped = sources.scan_ckplus(source)
        return SourceScan(items, skipped, sources.CKPLUS_CLASSES, protocol)
    classes = class_list(args.classes)
    if layout == "list":
        if not args.labels:
            raise BadInput(source, "--layout list needs --labels FILE")
        items, skipped = sources.scan_list(source, args.labels, class_names=classes)
        if classes is not None:
            listed = sources.listed_labels(args.labels)
            sources.require_classes(args.labels, classes, listed, "label in this list")
        return SourceScan(items, skipped, classes, protocol)
    pattern = args.subject_pattern
    kwargs = {"subject_pattern": pattern} if pattern is not None else {}
    exts = branch.extensions(args.options(branch))
    items, skipped = sources.scan_folders(source, exts, class_names=classes, **kwargs)
    return SourceScan(items, skipped, classes, protocol)


def class_list(text: str | None) -> tuple[str, ...] | None:
    """``--classes A,B,C`` as a tuple (None when not given)."""
    if text is None:
        return None
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    if len(set(names)) != len(names) or not names:
        raise commands.UsageError(
            f"--classes {text!r}: give distinct class names separated by commas"
        )
    return names


def check_flags(args: PreprocessArgs) -> None:
    """Refuse numbers and patterns that make no sense before any work (``UsageError``); the
    branch's options check their own (``--size``, ``--every``, ``--max-frames``, ...)."""
    commands.at_least("--per-shard", args.per_shard, 1, "items per shard")
    commands.at_least("--num-cpus", args.num_cpus, 1, "each shard task takes one")
    check_fold_flags(args.folds, args.inner_folds, args.seed)
    if args.subject_pattern is not None:
        try:
            groups = re.compile(args.subject_pattern).groups
        except re.error as err:
            raise commands.UsageError(
                f"--subject-pattern {args.subject_pattern!r}: {err}"
            ) from None
        if groups < 1:
            raise commands.UsageError(f"--subject-pattern {args.subject_pattern!r} has no group: "
                                 "its group 1 is the subject")  # fmt: skip


def preprocess(args: PreprocessArgs) -> int:
    """Run the whole job; returns the process exit code."""
    t0 = time.time()
    branch = get_branch(args.branch)
    opts = args.options(branch)
    check_flags(args)
    try:
        branch.check_options(opts)
    except ImportError as err:  # an optional install is missing: its message says how
        raise commands.UsageError(str(err)) from None
    found = scan(branch, args)
    items, skipped = found.items, [list(s) for s in found.skipped]
    if found.classes is None:  # labels come from folder names or a list: look for typos first
        for warning in sources.label_warnings(items):
            print(f"warning: {warning}", file=sys.stderr)
    if branch.extensions(opts) == JOINT_EXTENSIONS:  # joint files: one layout per shard folder
        from datasets.joints import one_layout

        items, odd = one_layout(args.source, items)
        skipped += odd
    if not items:
        print(f"error: {args.source}: no usable items ({len(skipped)} skipped)", file=sys.stderr)
        for path, reason in skipped:
            print(f"  skipped {path}: {reason}", file=sys.stderr)
        return 2
    classes = list(found.classes or sources.class_names_for(items))
    if found.classes:  # the layout's own class order; drop classes with no item
        present = {it.label for it in items}
        classes = [c for c in classes if c in present]
    if len(classes) < 2:
        n = sum(it.label == classes[0] for it in items)
        raise commands.UsageError(
            f"{args.source}: one class is not a classification: found only {classes[0]!r} "
            f"({n} usable item(s), {len(skipped)} skipped); give two or more classes"
        )
    options = asdict(opts)
    plan = plan_shards(items, args.per_shard)
    plan_doc = {
        "kind": branch.name,
        "classes": classes,
        "options": options,
        "shards": [[it.id for it in group] for group in plan],
    }
    storage.ensure_writable_dir(args.out, "--out folder")
    storage.remove_stale_temporaries(args.out)
    check_plan(args.out, plan_doc)

    done = {i for i in range(len(plan)) if storage.exists(summary_path(args.out, i))}
    todo = [
        {
            "branch": branch.name,
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
        import ray

        ours = not ray.is_initialized()  # a local instance (or connection) of this job's own
        tasks = run_tasks(todo)
        try:
            # The tasks' own output (MediaPipe's and the decoders' native warnings, several
            # lines a video) stays in Ray's worker logs; our progress line and summary are the
            # console. A failing shard still reaches it, through the task's exception.
            init_ray(args.address, args.num_cpus, log_to_driver=False)
            bar = Bar("preprocessing", sum(len(plan[t["shard"]]) for t in todo))
            for row in tasks:
                bar.update(int(row["written"]) + int(row["failed"]))
            bar.close()
        except KeyboardInterrupt:  # SIGINT or SIGTERM (main): keep the finished shards
            tasks.close()  # cancels the tasks in flight
            if ours and ray.is_initialized():
                ray.shutdown()  # and this job's own workers
            raise

    summaries = [
        json.loads(storage.read_bytes(summary_path(args.out, i))) for i in range(len(plan))
    ]
    failed = skipped + [e for s in summaries for e in s["errors"]]
    centre = [p for s in summaries for p in s["centre_cropped"]]
    notes = [n for s in summaries for n in s.get("notes", [])]
    written = sum(s["written"] for s in summaries)
    if written == 0:
        print(f"error: {args.source}: nothing usable was written", file=sys.stderr)
        _print_failures(failed)
        return 1

    table = shards.read_table(args.out, columns=list(branch.fold_columns()))
    ids = table["id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"{args.out}: duplicate ids across shards (a torn earlier run?)")
    subjects, labels = table["subject"].to_pylist(), table["label"].to_pylist()
    default = default_to_keep(args.out, found.protocol)
    manifest = Manifest(
        kind=branch.name,
        classes=tuple(classes),
        options=options,
        counts=Counts(
            read=len(items) + len(skipped),
            written=written,
            skipped=len(failed),
            centre_cropped=len(centre),
            per_class=dict(Counter(classes[i] for i in labels)),
            subjects=len({s for s in subjects if s}),
        ),
        source=str(args.source),
        layout=args.layout,
        skipped=tuple(tuple(f) for f in failed),
        centre_cropped=tuple(centre),
        notes=tuple(tuple(n) for n in notes),
        git_commit=git_commit(),
        protocol=default,
        **branch.manifest_extra(table),
    )
    write_manifest(args.out, manifest)
    # Folds are a step of their own (distributed.folds); the default protocol is tried here, and
    # data that cannot fill it (one subject, a class with one item) still leaves usable shards.
    fargs = FoldsArgs(
        args.out,
        found.protocol,
        args.folds,
        args.inner_folds,
        args.seed,
        args.fold_lists,
        args.source,
        default=True,
    )
    try:
        _, protocol, _ = write_folds(fargs)
        print_warnings(protocol)
        folds_line = f"folds: {describe(protocol)} (protocol {found.protocol!r}, the default)"
    except ProtocolError as err:
        stays = f"; the default stays {default!r}, stored before" if default else ""
        folds_line = (
            f"no folds written: {err}{stays}; choose counts the data can fill with "
            f"{rewrite_hint(args.out, found.protocol)}"
        )
    _print_summary(manifest, time.time() - t0)
    print(folds_line)
    return 0


def _print_failures(failed, file=None) -> None:
    for path, reason in failed:
        print(f"  skipped {path}: {reason}", file=file or sys.stderr)


def _print_summary(manifest: Manifest, seconds: float) -> None:
    c = manifest.counts
    print(f"\n{manifest.kind} shards written in {seconds:.1f} s")
    print_table(
        [
            ("items read", c.read),
            ("rows written", c.written),
            ("skipped", c.skipped),
            ("centre-cropped (no face found)", c.centre_cropped),
            ("subjects", c.subjects),
        ]
        + [(f"class {k}", v) for k, v in sorted(c.per_class.items())],
        ("", "count"),
    )
    if manifest.skipped:
        print("\nskipped items:")
        _print_failures(manifest.skipped, file=sys.stdout)
    if manifest.notes:
        print("\nkept, with a note:")
        for path, note in manifest.notes:
            print(f"  {path}: {note}")
    if manifest.centre_cropped:
        print("\nno face found (centre crop used):")
        for p in manifest.centre_cropped:
            print(f"  {p}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distributed.preprocess",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("branch", type=branch_arg, metavar="BRANCH", help=BRANCH_HELP)
    p.add_argument("--source", required=True, help="source folder")
    p.add_argument("--layout", choices=LAYOUTS, default="folders")
    p.add_argument("--labels", help="label list for --layout list: '<relative path> <Label>' lines")
    p.add_argument(
        "--classes",
        help="the class names, comma-separated: other labels are skipped (folders, list layouts)",
    )
    p.add_argument("--out", required=True, help="output shard folder (path or URI)")
    p.add_argument("--size", type=int, default=224, help="face crop size S (videos)")
    p.add_argument(
        "--detector",
        default="haar",
        help="face detector: haar, mediapipe, mediapipe-full (optional install: make "
        "pose) or none (already face-cropped sets)",
    )
    p.add_argument("--every", type=int, default=5, help="run the detector every N frames")
    p.add_argument("--margin", type=float, default=0.2, help="crop margin around the face box")
    p.add_argument(
        "--align",
        action="store_true",
        help="level each face crop on its eye line (needs --detector mediapipe)",
    )
    p.add_argument("--max-frames", type=int, default=None, help="keep at most N frames per video")
    p.add_argument(
        "--pose",
        choices=["mediapipe"],
        default=None,
        help="gesture branch: estimate poses on videos (optional install: make pose)",
    )
    p.add_argument("--per-shard", type=int, default=8, help="items per shard (and per Ray task)")
    p.add_argument("--folds", type=int, default=5, help="outer subject-independent folds")
    p.add_argument(
        "--inner-folds", type=int, default=3, help="inner validation folds per outer fold"
    )
    p.add_argument("--seed", type=int, default=0, help="fold seed")
    p.add_argument("--fold-lists", help="trainN.txt/evalN.txt lists: the outer folds (e.g. CK+)")
    p.add_argument("--subject-pattern", help="regex whose group 1 is the subject (folders layout)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray instance")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = PreprocessArgs(**vars(build_parser().parse_args(argv)))
    again = f"python -m distributed.preprocess {shlex.join(argv)}"
    return commands.run_stoppable(
        lambda: preprocess(args),
        lambda: (
            f"{finished_shards(args.out)}; the same command resumes shard by shard, "
            f"continue with: {again}"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
