"""The results folder of a nested-CV search: JSON, CSVs, PNG plots and report.md."""

from __future__ import annotations

import csv
import io
import json

import numpy as np

from datasets import storage
from datasets.manifest import Manifest
from datasets.protocols import Protocol
from distributed.results.metrics import uar, war
from distributed.results.plots import (
    confusion_csv,
    confusion_png,
    history_png,
    importance_note,
    importance_png,
    importances,
)


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return buf.getvalue().encode()


def write_trials(root: str, rows: list[dict]) -> str:
    """``root/results/trials.csv``: one row per trial (from the ledgers); returns its path."""
    path = storage.join(root, "results", "trials.csv")
    storage.atomic_write_bytes(path, _csv(rows))
    return path


PREDICTIONS = "predictions.csv"


def prediction_rows(finals: list[dict], classes: list[str], subjects: dict[str, str]) -> list:
    """One row per outer-test item of every outer fold: outer, id, subject, true and predicted
    class, each class's probability (``p_<class>``), the predicting head and the config hash."""
    rows = []
    for f in finals:
        for item, y, p in zip(f["ids"], f["y"], f["probs"]):
            row = {"outer": f["outer"], "id": item, "subject": subjects.get(item, ""),
                   "true": classes[int(y)], "predicted": classes[int(np.argmax(p))]}  # fmt: skip
            row.update({f"p_{c}": round(float(v), 6) for c, v in zip(classes, p)})
            row.update(head=f.get("head", ""), config_hash=f.get("config_hash", ""))
            rows.append(row)
    return rows


def fold_intervals(finals: list[dict], classes: list[str]) -> dict | None:
    """The 95% bootstrap interval of the mean-over-folds WAR and UAR (items resampled within
    each outer fold: ``distributed.results.comparison``); None without per-item predictions."""
    from distributed.results.comparison import Fold, Run, run_intervals

    if not finals or any("probs" not in f for f in finals):
        return None
    folds = {
        f["outer"]: Fold(np.array(f["ids"]), np.array(f["y"]), np.argmax(f["probs"], axis=1))
        for f in finals
    }
    return run_intervals(Run("run", "", classes, folds), sorted(folds))


def _precision(precision: str, gpus: float) -> str:
    if gpus:
        return precision + (
            " (bf16 where the GPU supports it, else fp16)" if precision == "auto" else ""
        )
    return f"{precision} on CPUs: fp32" if precision == "auto" else precision


def write_results(
    root: str,
    *,
    shards: str,
    samples: int,
    manifest: Manifest,
    protocol: Protocol,
    base,
    space,
    rows,
    finals,
    seconds: float,
    commit: str,
    workers: int = 1,
    gpus: float = 0.0,
) -> str:
    """Write every result file under ``root/results`` and return report.md's text
    (``workers``, ``gpus``: each fit's workers and GPUs per worker, stated in the report)."""
    out = storage.join(root, "results")
    metric = "cv_metric"
    classes = list(manifest.classes)
    folds = [
        {
            "outer": f["outer"],
            "n_test": f["n"],
            "war": f["war"],
            "uar": f["uar"],
            "inner_cv": f["cv_metric"],
            "epochs": f["epochs"],
            "trial": f["trial"],
            **f["params"],
        }
        for f in finals
    ]
    wars, uars = np.array([f["war"] for f in finals]), np.array([f["uar"] for f in finals])
    cm = np.sum([np.array(f["confusion"]) for f in finals], axis=0)
    best = {
        "per_outer_fold": [
            {"outer": f["outer"], "params": f["params"], "epochs": f["epochs"]} for f in finals
        ],
        "base_config": base.to_dict(),
        "search_space": space.space,
    }
    dists = space.optuna_distributions()
    imp = importances(rows, dists, metric)
    imp_png = importance_png(imp)
    write = storage.atomic_write_bytes
    write(storage.join(out, "best_config.json"), json.dumps(best, indent=2).encode())
    write_trials(root, rows)
    write(storage.join(out, "folds.csv"), _csv(folds))
    history = history_png(rows, metric, label=base.select_metric.upper())
    write(storage.join(out, "optimisation_history.png"), history)
    if imp_png is not None:
        write(storage.join(out, "param_importances.png"), imp_png)
    title = f"outer test folds pooled: WAR {war(cm):.3f} UAR {uar(cm):.3f}"
    write(storage.join(out, "confusion.png"), confusion_png(cm, classes, title))
    write(storage.join(out, "confusion.csv"), confusion_csv(cm, classes))
    cis = fold_intervals(finals, classes)
    if cis is not None:
        from datasets.shards import read_table

        index = read_table(shards, ["id", "subject"]).to_pydict()
        subjects = dict(zip(index["id"], index["subject"]))
        write(storage.join(out, PREDICTIONS), _csv(prediction_rows(finals, classes, subjects)))
    stopped = sum(not r["complete"] for r in rows)
    n_inner = len(protocol.fold(finals[0]["outer"]).inner) if finals else 0
    lines = [
        f"# Nested cross-validation: {manifest.kind}",
        "",
        f"- data: `{shards}` ({manifest.counts.written} items, "
        f"{manifest.counts.subjects} subjects, classes {', '.join(classes)})",
        f"- protocol: {protocol.name} ({protocol.description})",
        f"- outer folds run: {len(finals)} of {len(protocol.outer)}; inner splits per "
        f"outer fold: {n_inner}",
        f"- search: Optuna TPE + ASHA, {samples} trials per outer fold, {len(rows)} trials in "
        f"all, {stopped} stopped early; selection metric: inner validation "
        f"{base.select_metric.upper()} (mean over inner splits)",
        f"- model: `{base.model.name}`, git commit `{commit}`, {seconds / 60:.1f} min",
        f"- training: batch {base.batch_size} per step over {workers} worker(s) "
        f"({base.batch_size // workers} each), learning rate as configured (not scaled with "
        f"workers), precision {_precision(base.precision, gpus)}",
        "",
        "## Result (outer test folds, never seen by the search)",
        "",
        f"**WAR {wars.mean():.3f} ± {wars.std():.3f}, UAR {uars.mean():.3f} ± {uars.std():.3f}** "
        f"(mean ± std over {len(finals)} outer folds)",
        ""
        if cis is None
        else f"95% bootstrap interval of the mean (test items resampled within each outer "
        f"fold): WAR {cis['war'][0]:.3f}–{cis['war'][1]:.3f}, UAR {cis['uar'][0]:.3f}–"
        f"{cis['uar'][1]:.3f}",
        "",
        "| outer fold | n test | WAR | UAR | inner-CV | epochs | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in finals:
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in f["params"].items()
        )
        lines.append(
            f"| {f['outer']} | {f['n']} | {f['war']:.3f} | {f['uar']:.3f} | "
            f"{f['cv_metric']:.3f} | {f['epochs']} | {params} |"
        )
    lines += [
        "",
        "Files: `best_config.json`, `trials.csv` (one row per trial), `folds.csv` (one row per "
        "outer fold), "
        f"{'`predictions.csv` (one row per outer-test item), ' if cis is not None else ''}"
        "`optimisation_history.png`, "
        f"{'`param_importances.png`, ' if imp_png is not None else ''}`confusion.png`/`.csv` "
        "(outer test folds pooled).",
    ]
    if imp:
        lines += ["", "Parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items())]
    else:
        lines += ["", importance_note(rows, dists, metric)]
    text = "\n".join(lines) + "\n"
    write(storage.join(out, "report.md"), text.encode())
    return text
