"""Evaluate a model checkpoint on one fold of a shard folder.

    python -m distributed.evaluate --checkpoint PATH --shards DIR --fold I [--out DIR]

Scores the outer test fold I (or, with ``--inner J``, the validation split of inner split J):
WAR, UAR, per-class precision/recall, the confusion matrix as PNG and CSV, and a JSON summary.
Evaluation is deterministic (evenly spaced clips) and streams the shards row group by row group.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import posixpath
import sys
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from datasets import shards, storage
from distributed.data import COLUMNS, make_collate
from distributed.metrics import confusion, per_class, uar, war
from distributed.steps import load_model_checkpoint, model_inputs, predict_probs


def iter_fold_batches(root: str, kind: str, ids, batch_size: int = 16) -> Iterator[dict]:
    """Numpy batches (like Ray Data's) of the rows whose id is in ``ids``, in shard order."""
    wanted = pa.array(sorted(ids), pa.string())
    for path in shards.shard_files(root):
        pf = pq.ParquetFile(pa.BufferReader(storage.read_bytes(path)))
        for rb in pf.iter_batches(batch_size=batch_size, columns=COLUMNS[kind]):
            rb = rb.filter(pc.is_in(rb.column("id"), value_set=wanted))
            if rb.num_rows:
                yield {
                    name: rb.column(name).to_numpy(zero_copy_only=False) for name in rb.schema.names
                }


def predict_fold(model, cfg, root: str, ids, device="cpu", batch_size: int = 8):
    """(ids, y_true, probabilities) for the rows of ``ids``."""
    collate = make_collate(cfg, train=False, epoch=0)
    out_ids, ys, probs = [], [], []
    with torch.no_grad():
        for batch in iter_fold_batches(root, cfg.kind, ids, batch_size):
            tb = collate(batch)
            probs.append(
                predict_probs(cfg, model, model_inputs(cfg, tb, torch.device(device))).cpu()
            )
            ys.append(tb["y"])
            out_ids.extend(str(i) for i in batch["id"])
    if not out_ids:
        raise ValueError(f"{root}: none of the {len(ids)} requested rows are in the shards")
    return out_ids, torch.cat(ys).numpy(), torch.cat(probs).numpy()


def summarise(y_true, y_pred, class_names) -> dict:
    cm = confusion(y_true, y_pred, len(class_names))
    return {
        "n": int(len(y_true)),
        "war": war(cm),
        "uar": uar(cm),
        "classes": list(class_names),
        "per_class": per_class(cm),
        "confusion": cm.tolist(),
    }


def confusion_png(cm: np.ndarray, class_names, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(class_names), 0.8 + 0.6 * len(class_names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def confusion_csv(cm, class_names) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true\\predicted", *class_names])
    for name, row in zip(class_names, np.asarray(cm).tolist()):
        w.writerow([name, *row])
    return buf.getvalue().encode()


def write_report(out: str, summary: dict, prefix: str = "") -> None:
    names, cm = summary["classes"], summary["confusion"]
    title = f"WAR {summary['war']:.3f}  UAR {summary['uar']:.3f}  (n={summary['n']})"
    storage.atomic_write_bytes(
        storage.join(out, f"{prefix}confusion.png"), confusion_png(cm, names, title)
    )
    storage.atomic_write_bytes(
        storage.join(out, f"{prefix}confusion.csv"), confusion_csv(cm, names)
    )
    storage.atomic_write_bytes(
        storage.join(out, f"{prefix}summary.json"), json.dumps(summary, indent=2).encode()
    )


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
    p.add_argument("--out", default=None, help="report folder (default: next to the checkpoint)")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model, cfg, blob = load_model_checkpoint(storage.read_bytes(args.checkpoint), args.device)
    manifest = shards.read_manifest(args.shards)
    if list(manifest["classes"]) != list(blob["class_names"]):
        print(
            f"error: {args.shards}: classes {manifest['classes']} differ from the checkpoint's "
            f"{blob['class_names']}",
            file=sys.stderr,
        )
        return 2
    outer = manifest["folds"]["outer"][args.fold]
    ids = outer["test"] if args.inner is None else outer["inner"][args.inner]["val"]
    ids_seen, y, probs = predict_fold(model, cfg, args.shards, ids, args.device)
    summary = summarise(y, probs.argmax(1), blob["class_names"])
    summary.update(checkpoint=args.checkpoint, fold=args.fold, inner=args.inner, ids=ids_seen)
    out = args.out or storage.join(
        posixpath.dirname(args.checkpoint) or ".", f"eval-fold{args.fold}"
    )
    write_report(out, summary)
    print(f"WAR {summary['war']:.4f}  UAR {summary['uar']:.4f}  n={summary['n']}  -> {out}")
    for name, p_, r_ in zip(
        summary["classes"], summary["per_class"]["precision"], summary["per_class"]["recall"]
    ):
        print(f"  {name:12s} precision {p_:.3f}  recall {r_:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
