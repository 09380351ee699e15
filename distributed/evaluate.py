"""Evaluate a model checkpoint on one fold of a shard folder.

Scores the outer test fold I (or, with ``--inner J``, the validation split of inner split J):
WAR, UAR, per-class precision/recall, the confusion matrix as PNG and CSV, and a JSON summary.
Evaluation is deterministic (the evaluation clips) and reads the shards row group by row group.

The checkpoint says which rows trained it (its outer fold and inner split of a stored protocol):
scoring any of them as test data is refused unless ``--allow-train-rows`` is given, and so are
shards preprocessed otherwise than the checkpoint's training data (crop size, detector, ...)
unless ``--allow-other-preprocessing``.
"""

from __future__ import annotations

import argparse
import posixpath
import sys
from dataclasses import dataclass

from branches import get_branch
from datasets import storage
from datasets.manifest import ManifestError, read_manifest, read_protocol
from datasets.protocols import ProtocolError
from distributed.core import commands
from distributed.inference.evaluation import predict_fold, summarise, write_report
from distributed.training.checkpoint import load_model


@dataclass(frozen=True)
class EvaluateArgs:
    checkpoint: str
    shards: str
    fold: int
    inner: int | None = None
    protocol: str | None = None
    out: str | None = None
    device: str = "cpu"
    allow_train_rows: bool = False
    allow_other_preprocessing: bool = False


def training_rows(mf, root: str, manifest) -> tuple[set[str] | None, set[str], str]:
    """(ids that trained the checkpoint, ids its kept epoch was chosen on, a description), or
    (None, empty, why it is not known)."""
    on = mf.trained_on
    if on.outer is None or on.protocol is None:
        return None, set(), "the checkpoint does not name the fold it was trained on"
    try:
        _, protocol = read_protocol(root, manifest, on.protocol)
        outer = protocol.fold(on.outer)
    except (ManifestError, ProtocolError):
        return None, set(), f"these shards do not hold its protocol {on.protocol!r}"
    if on.inner is None:
        return (
            set(outer.train),
            set(),
            f"the training rows of outer fold {on.outer} ({on.protocol})",
        )
    rows = outer.inner_split(on.inner)
    how = f"inner split {on.inner} of outer fold {on.outer} ({on.protocol})"
    return set(rows.train), set(rows.val), how


def _normalised(kind: str, options: dict) -> dict:
    """Options with the branch's defaults filled in (files written before an option existed
    lack its key, and meant its default)."""
    from dataclasses import asdict

    try:
        return asdict(get_branch(kind).options_type(**options))
    except (TypeError, ValueError):
        return dict(options)


def check_preprocessing(mf, manifest, shards: str, checkpoint: str) -> None:
    """The shards must be preprocessed as the checkpoint's training data was."""
    mine, theirs = (
        _normalised(manifest.kind, mf.data.options),
        _normalised(manifest.kind, manifest.options),
    )
    diff = {
        k: (mine.get(k), theirs.get(k))
        for k in sorted(set(mine) | set(theirs))
        if mine.get(k) != theirs.get(k)
    }
    if diff:
        said = ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())
        raise commands.UsageError(
            f"{shards} were preprocessed otherwise than {checkpoint}'s training "
            f"data ({said}, checkpoint vs shards); preprocess them the same way, "
            "or pass --allow-other-preprocessing"
        )


def evaluate(args: EvaluateArgs) -> tuple[dict, str]:
    """Score the fold the arguments name; returns (summary, report folder)."""
    mf = load_model(storage.read_bytes(args.checkpoint), args.device, name=args.checkpoint)
    manifest = read_manifest(args.shards)
    if manifest.kind != mf.config.branch:  # (no --allow-... flag: the rows cannot be read)
        raise commands.UsageError(
            f"{args.checkpoint} is a {mf.config.branch} model and {args.shards} hold "
            f"{manifest.kind} shards; score it on {mf.config.branch} shards"
        )
    if tuple(manifest.classes) != tuple(mf.classes):
        raise commands.UsageError(
            f"{args.shards}: classes {list(manifest.classes)} differ from the "
            f"checkpoint's {list(mf.classes)}"
        )
    _, protocol = read_protocol(args.shards, manifest, args.protocol)
    outer = protocol.fold(args.fold)
    where = f"{args.shards}: outer fold {args.fold}: "
    ids = outer.test if args.inner is None else outer.inner_split(args.inner, where).val
    if not args.allow_other_preprocessing:
        check_preprocessing(mf, manifest, args.shards, args.checkpoint)
    trained, selected, how = training_rows(mf, args.shards, manifest)
    if trained is None:
        print(
            f"warning: cannot tell which rows trained {args.checkpoint} ({how}); make sure "
            "the scored rows were held out",
            file=sys.stderr,
        )
    elif trained & set(ids) and not args.allow_train_rows:
        raise commands.UsageError(
            f"{args.checkpoint} was trained on {how}: {len(trained & set(ids))} of the "
            f"{len(ids)} rows to score trained it, so they are not test data; score --fold "
            f"{mf.trained_on.outer}, the fold it was held out on, or pass --allow-train-rows to "
            "score them anyway"
        )
    elif selected & set(ids):
        print(
            f"note: {len(selected & set(ids))} of these rows are the validation rows "
            f"{args.checkpoint}'s epoch was chosen on: a validation figure, not a test figure",
            file=sys.stderr,
        )
    out = args.out or storage.join(
        posixpath.dirname(args.checkpoint) or ".", f"eval-fold{args.fold}"
    )
    storage.ensure_writable_dir(out, "report folder")  # before the scoring, not after it
    ids_seen, y, probs = predict_fold(mf, args.shards, ids, args.device)
    summary = summarise(y, probs.argmax(1), mf.classes)
    summary.update(checkpoint=args.checkpoint, fold=args.fold, inner=args.inner, ids=ids_seen)
    write_report(out, summary)
    return summary, out


def build_parser() -> argparse.ArgumentParser:
    p = commands.Parser(
        prog="python -m distributed.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by train or tune")
    p.add_argument("--shards", required=True)
    p.add_argument("--fold", type=int, required=True, help="outer fold whose test split is scored")
    p.add_argument("--inner", type=int, default=None, help="score inner split J's validation rows")
    p.add_argument("--protocol", help="stored protocol (default: the shards' default)")
    p.add_argument("--out", default=None, help="report folder (default: next to the checkpoint)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--allow-train-rows",
        action="store_true",
        help="score rows that trained the checkpoint (not a test figure)",
    )
    p.add_argument(
        "--allow-other-preprocessing",
        action="store_true",
        help="score shards preprocessed otherwise than the training data",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = EvaluateArgs(**vars(build_parser().parse_args(argv)))

    def body() -> int:
        summary, out = evaluate(args)
        print(f"WAR {summary['war']:.4f}  UAR {summary['uar']:.4f}  n={summary['n']}  -> {out}")
        for name, p_, r_ in zip(
            summary["classes"], summary["per_class"]["precision"], summary["per_class"]["recall"]
        ):
            print(f"  {name:12s} precision {p_:.3f}  recall {r_:.3f}")
        return 0

    return commands.run_stoppable(body, commands.start_over("distributed.evaluate", argv))


if __name__ == "__main__":
    sys.exit(main())
