"""Evaluate a model checkpoint on one fold of a shard folder.

    python -m distributed.evaluate --checkpoint PATH --shards DIR --fold I [--inner J] [--out DIR]

Scores the outer test fold I (or, with ``--inner J``, the validation split of inner split J):
WAR, UAR, per-class precision/recall, the confusion matrix as PNG and CSV, and a JSON summary.
Evaluation is deterministic (the evaluation clips) and reads the shards row group by row group.
"""

from __future__ import annotations

import argparse
import posixpath
import sys
from dataclasses import dataclass

from datasets import storage
from datasets.manifest import read_manifest, read_protocol
from distributed import cli
from distributed.checkpoint import load_model
from distributed.evaluation import predict_fold, summarise, write_report


@dataclass(frozen=True)
class EvaluateArgs:
    checkpoint: str
    shards: str
    fold: int
    inner: int | None = None
    protocol: str | None = None
    out: str | None = None
    device: str = "cpu"


def evaluate(args: EvaluateArgs) -> tuple[dict, str]:
    """Score the fold the arguments name; returns (summary, report folder)."""
    mf = load_model(storage.read_bytes(args.checkpoint), args.device, name=args.checkpoint)
    manifest = read_manifest(args.shards)
    if tuple(manifest.classes) != tuple(mf.classes):
        raise cli.UsageError(
            f"{args.shards}: classes {list(manifest.classes)} differ from the "
            f"checkpoint's {list(mf.classes)}"
        )
    _, protocol = read_protocol(args.shards, manifest, args.protocol)
    outer = protocol.fold(args.fold)
    where = f"{args.shards}: outer fold {args.fold}: "
    ids = outer.test if args.inner is None else outer.inner_split(args.inner, where).val
    ids_seen, y, probs = predict_fold(mf, args.shards, ids, args.device)
    summary = summarise(y, probs.argmax(1), mf.classes)
    summary.update(checkpoint=args.checkpoint, fold=args.fold, inner=args.inner, ids=ids_seen)
    out = args.out or storage.join(
        posixpath.dirname(args.checkpoint) or ".", f"eval-fold{args.fold}"
    )
    write_report(out, summary)
    return summary, out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
