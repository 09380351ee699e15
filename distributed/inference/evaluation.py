"""Scoring a model on rows of a shard folder, without Ray: the library behind
``distributed.evaluate``, the search's outer-test scoring and fusion.

Rows are read shard by shard (row groups of the Parquet files, only the branch's columns) and
batched exactly as Ray Data hands them to the workers, then passed through the branch's
evaluation collate (deterministic clips), so a score here is the score training reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from branches import get_branch
from datasets import shards, storage
from distributed.results.metrics import confusion, per_class, uar, war
from distributed.results.plots import confusion_csv, confusion_png
from distributed.training.checkpoint import ModelFile
from distributed.training.steps import model_inputs, predict_probs


def iter_fold_batches(root: str, branch: str, ids, batch_size: int = 16) -> Iterator[dict]:
    """Numpy batches (like Ray Data's) of the rows whose id is in ``ids``, in shard order."""
    wanted = pa.array(sorted(ids), pa.string())
    columns = list(get_branch(branch).columns)
    for path in shards.shard_files(root):
        pf = pq.ParquetFile(pa.BufferReader(storage.read_bytes(path)))
        for rb in pf.iter_batches(batch_size=batch_size, columns=columns):
            rb = rb.filter(pc.is_in(rb.column("id"), value_set=wanted))
            if rb.num_rows:
                yield {
                    name: rb.column(name).to_numpy(zero_copy_only=False) for name in rb.schema.names
                }


def probabilities(mf: ModelFile, batch: dict, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(y, probabilities of the predicting head) of one numpy batch of shard columns."""
    cfg = mf.config
    collate = get_branch(cfg.branch).collate(cfg.model, train=False, seed=cfg.seed, epoch=0)
    tb = collate(batch)
    with torch.no_grad():
        probs = predict_probs(cfg, mf.model, model_inputs(cfg, tb, torch.device(device)))
    return tb["y"].numpy(), probs.cpu().numpy()


def predict_fold(mf: ModelFile, root: str, ids, device="cpu", batch_size: int = 8):
    """(ids, y_true, probabilities) for the rows of ``ids``."""
    out_ids, ys, probs = [], [], []
    for batch in iter_fold_batches(root, mf.config.branch, ids, batch_size):
        y, p = probabilities(mf, batch, device)
        ys.append(y)
        probs.append(p)
        out_ids.extend(str(i) for i in batch["id"])
    if not out_ids:
        raise ValueError(f"{root}: none of the {len(ids)} requested rows are in the shards")
    return out_ids, np.concatenate(ys), np.concatenate(probs)


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


def write_report(out: str, summary: dict, prefix: str = "") -> None:
    """confusion.png / .csv and summary.json of one evaluation under ``out``."""
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
