"""The results folder of a nested-CV search: JSON, CSVs, PNG plots and report.md."""

from __future__ import annotations

import csv
import io
import json

import numpy as np

from datasets import storage
from distributed.evaluate import confusion_csv, confusion_png
from distributed.metrics import uar, war


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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def history_png(rows: list[dict], metric: str) -> bytes:
    """Each trial's inner-CV metric in trial order, and the running best, per outer fold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for outer in sorted({r["outer"] for r in rows}):
        vals = [r[metric] if r["complete"] else np.nan for r in rows if r["outer"] == outer]
        x = np.arange(1, len(vals) + 1)
        ax.plot(x, vals, "o", label=f"outer {outer}: complete trials")
        best = np.fmax.accumulate(np.nan_to_num(vals, nan=-np.inf))
        ax.step(x, np.where(np.isinf(best), np.nan, best), where="post")
        stopped = [r[metric] if not r["complete"] else np.nan for r in rows if r["outer"] == outer]
        ax.plot(x, stopped, "x", color="grey")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"inner-CV {metric} (x = stopped early by ASHA)")
    ax.legend(fontsize=8)
    ax.set_title("optimisation history")
    return _png(fig)


def importances(rows: list[dict], space, metric: str) -> dict[str, float]:
    """Optuna's fANOVA importances over the complete trials (empty when too few trials)."""
    import optuna

    dists = space.optuna_distributions()
    complete = [r for r in rows if r["complete"]]
    if len(complete) < 3 or not dists:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for r in complete:
        params = {k: r[k] for k in dists}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=r[metric])
        )
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):  # e.g. every trial took the same value
        return {}


def importance_png(imp: dict[str, float]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * max(len(imp), 1)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("parameter importances" if imp else "parameter importances: too few trials")
    return _png(fig)


def write_results(root, *, args, manifest, base, space, rows, finals, seconds, commit) -> str:
    """Write every result file under ``root/results`` and return report.md's text."""
    out = storage.join(root, "results")
    metric = "cv_metric"
    classes = manifest["classes"]
    folds = [
        {
            "outer": f["outer"],
            "n_test": f["n"],
            "war": f["war"],
            "uar": f["uar"],
            "inner_cv": f["cv_metric"],
            "epochs": f["epochs"],
            "trial_id": f["trial_id"],
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
    imp = importances(rows, space, metric)
    write = storage.atomic_write_bytes
    write(storage.join(out, "best_config.json"), json.dumps(best, indent=2).encode())
    write(storage.join(out, "trials.csv"), _csv(rows))
    write(storage.join(out, "folds.csv"), _csv(folds))
    write(storage.join(out, "optimisation_history.png"), history_png(rows, metric))
    write(storage.join(out, "param_importances.png"), importance_png(imp))
    title = f"outer test folds pooled: WAR {war(cm):.3f} UAR {uar(cm):.3f}"
    write(storage.join(out, "confusion.png"), confusion_png(cm, classes, title))
    write(storage.join(out, "confusion.csv"), confusion_csv(cm, classes))
    stopped = sum(not r["complete"] for r in rows)
    lines = [
        f"# Nested cross-validation: {manifest['kind']}",
        "",
        f"- data: `{args.shards}` ({manifest['counts']['written']} items, "
        f"{manifest['counts']['subjects']} subjects, classes {', '.join(classes)})",
        f"- outer folds run: {len(finals)} of {len(manifest['folds']['outer'])}; inner splits per "
        f"outer fold: {len(manifest['folds']['outer'][0]['inner'])} (subject-disjoint)",
        f"- search: Optuna TPE + ASHA, {args.samples} trials per outer fold, {len(rows)} trials in "
        f"all, {stopped} stopped early; selection metric: inner validation "
        f"{base.select_metric.upper()} (mean over inner splits)",
        f"- model: `{base.model}`, git commit `{commit}`, {seconds / 60:.1f} min",
        "",
        "## Result (outer test folds, never seen by the search)",
        "",
        f"**WAR {wars.mean():.3f} ± {wars.std():.3f}, UAR {uars.mean():.3f} ± {uars.std():.3f}** "
        f"(mean ± std over {len(finals)} outer folds)",
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
        "outer fold), `optimisation_history.png`, `param_importances.png`, `confusion.png`/`.csv` "
        "(outer test folds pooled).",
    ]
    if imp:
        lines += ["", "Parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items())]
    text = "\n".join(lines) + "\n"
    write(storage.join(out, "report.md"), text.encode())
    return text
