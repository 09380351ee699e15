"""What prediction writes: one result dict per item, local prediction, JSON/CSV files, plots."""

from __future__ import annotations

import csv
import io
import json

from datasets import storage
from datasets.records import BadInput
from distributed.results.plots import timeline_png


def ok(item_id: str, path: str, pred) -> dict:
    return {"id": item_id, "path": path, "status": "ok", "error": None, **pred.to_dict()}


def failed(item_id: str, path: str, why: str) -> dict:
    return {"id": item_id, "path": path, "status": "error", "error": why}


def reason(err: Exception) -> str:
    return err.reason if isinstance(err, BadInput) else f"{type(err).__name__}: {err}"


def predict_local(predictor, items: list[tuple[str, str]]) -> list[dict]:
    """Predict items one by one in this process; a failing item becomes an error entry."""
    out = []
    for item_id, path in items:
        try:
            out.append(ok(item_id, path, predictor.predict_path(path)))
        except Exception as err:  # one bad input never stops the others
            out.append(failed(item_id, path, reason(err)))
    return out


CSV_FIELDS = (
    "id",
    "path",
    "status",
    "error",
    "clip",
    "start_frame",
    "end_frame",
    "start_s",
    "end_s",
    "label",
    "warnings",
)


def results_csv(results: list[dict], class_names: list[str]) -> str:
    """Long CSV: per item one ``clip=all`` row, then one row per timeline clip."""
    buf = io.StringIO()
    # what a branch adds to its predictions (the facial branch: face_fraction), after the fields
    known = {*CSV_FIELDS, "source", "probabilities", "timeline", "n_frames"}
    extras = sorted({k for r in results if r["status"] == "ok" for k in r} - known)
    w = csv.DictWriter(buf, [*CSV_FIELDS, *extras, *[f"p_{c}" for c in class_names]], restval="")
    w.writeheader()
    for r in results:
        row = {"id": r["id"], "path": r["path"], "status": r["status"], "clip": "all"}
        if r["status"] != "ok":
            w.writerow({**row, "error": r["error"]})
            continue
        probs = {f"p_{c}": r["probabilities"][c] for c in class_names}
        extra = {k: r.get(k, "") for k in extras} | {"warnings": " | ".join(r["warnings"])}
        span = {"start_frame": 0, "end_frame": r["n_frames"] - 1}
        w.writerow({**row, **span, "label": r["label"], **extra, **probs})
        for clip in r["timeline"]:
            p = clip["probabilities"]
            keys = ("start_frame", "end_frame", "start_s", "end_s")
            w.writerow(
                {
                    **row,
                    "clip": clip["index"],
                    **{k: clip[k] for k in keys},
                    "label": max(p, key=p.get),
                    **{f"p_{c}": p[c] for c in class_names},
                }
            )
    return buf.getvalue()


def write_outputs(
    results: list[dict], predictor, checkpoint: str, out: str | None, plot: str | None
) -> None:
    """``out``: .csv (long table) or JSON; ``plot``: a PNG (one item) or a folder of PNGs."""
    names = predictor.class_names
    if out:
        if out.endswith(".csv"):
            storage.atomic_write_bytes(out, results_csv(results, names).encode())
        else:
            doc = {
                "checkpoint": checkpoint,
                "kind": predictor.cfg.branch,
                "classes": names,
                "preprocessing": predictor.data.options,
                "config": predictor.cfg.flat(),
                "items": results,
            }
            storage.atomic_write_bytes(out, json.dumps(doc, indent=2).encode())
    if plot:
        good = [r for r in results if r["status"] == "ok"]
        single = plot.endswith(".png") and len(good) == 1
        for r in good:
            safe = r["id"].replace("/", "__") or "item"
            target = plot if single else storage.join(plot, f"{safe}.png")
            storage.atomic_write_bytes(target, timeline_png(r, names))
