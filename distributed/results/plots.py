"""The plots (PNG bytes) and the confusion table of the result files; no Ray, no torch.

- ``confusion_png`` / ``confusion_csv``: a confusion matrix (evaluate, the search report);
- ``history_png``: a nested-CV search's trials per outer fold, with the running best;
- ``importances`` / ``importance_png`` / ``importance_note``: Optuna's fANOVA parameter
  importances, or the sentence saying why there are none;
- ``timeline_png``: one prediction's clip-stream probabilities over time (predict).

Only numpy and matplotlib (and optuna, inside ``importances``) are imported, and only when a
function runs. Figures are drawn on matplotlib's Agg canvas directly (``Figure`` +
``FigureCanvasAgg``, no pyplot): nothing switches the process-wide backend or keeps figures open,
so these are safe to call from a Ray worker, a CLI or a test alike.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap

import numpy as np

DPI = 100
MIN_IMPORTANCE_TRIALS = 3  # fANOVA's forest needs a few distinct points to split on
_NOTE = "Parameter importances: not computed"


def _figure(width: float, height: float):
    """An Agg figure with constrained layout (it makes room for suptitles, colour bars and
    legends outside the axes, which tight_layout does not)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


# --- confusion matrix ----------------------------------------------------------------------------

_TITLE_PT, _TICK_PT = 11, 9
_CHAR_IN = 0.6 / 72  # an average DejaVu Sans character is ~0.6 em wide


def _confusion_figure(cm, class_names, title: str):
    cm = np.asarray(cm)
    names = [str(c) for c in class_names]
    n = len(names)
    if n == 0 or cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {n} class names")
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    # Figure size from the class count (cells), the longest name (ticks, the x ones at 45°) and
    # the colour bar; then the title is wrapped to the width it gets, so it is never cut.
    label_in = max(len(s) for s in names) * _TICK_PT * _CHAR_IN
    cell = max(0.45, min(0.8, 3.2 / n))
    # 4.5 in holds a one-line title of ~45 characters ("outer test folds pooled: WAR .. UAR ..");
    # longer titles wrap rather than widen the figure past the matrix.
    width = max(4.5, 0.9 + label_in + n * cell + 1.2)
    per_line = max(12, int((width - 0.3) / (_TITLE_PT * _CHAR_IN)))
    lines = textwrap.wrap(title, per_line) or [""]
    height = 0.9 + 0.75 * label_in + n * cell + 0.25 * len(lines)
    fig = _figure(width, height)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    bar = fig.colorbar(im, ax=ax, shrink=0.9, aspect=25)
    bar.set_label("fraction of the true class (row)", fontsize=_TICK_PT)
    bar.ax.tick_params(labelsize=8)
    ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=_TICK_PT)  # fmt: skip
    ax.set_yticks(range(n), names, fontsize=_TICK_PT)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    count_pt = 9 if n <= 8 else 7
    for i in range(n):
        for j in range(n):
            colour = "white" if frac[i, j] > 0.6 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour,
                    fontsize=count_pt)  # fmt: skip
    fig.suptitle("\n".join(lines), fontsize=_TITLE_PT)
    return fig


def confusion_png(cm, class_names, title: str) -> bytes:
    """The confusion matrix (rows true, columns predicted) with the count in every cell and each
    cell coloured by its share of the row (the recall of the true class on the diagonal).

    The figure is sized from the class count, the class names and the title, and the title is
    wrapped to that width, so it is always shown whole.
    """
    return _png(_confusion_figure(cm, class_names, title))


def confusion_csv(cm, class_names) -> bytes:
    """The confusion matrix as CSV: header ``true\\predicted,<classes>``, one row per true class."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true\\predicted", *class_names])
    for name, row in zip(class_names, np.asarray(cm).tolist()):
        w.writerow([name, *row])
    return buf.getvalue().encode()


# --- optimisation history ------------------------------------------------------------------------


def _value(row: dict, metric: str) -> float:
    v = row.get(metric)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _history_figure(rows: list[dict], metric: str, label: str | None):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, MaxNLocator

    folds = sorted({r["outer"] for r in rows})
    fig = _figure(8.0, 4.2)
    ax = fig.add_subplot()
    handles, longest = [], 1
    for k, outer in enumerate(folds):
        mine = [r for r in rows if r["outer"] == outer]
        longest = max(longest, len(mine))
        x = np.arange(1, len(mine) + 1)
        v = np.array([_value(r, metric) for r in mine])
        done = np.array([bool(r["complete"]) for r in mine])
        colour = f"C{k % 10}"
        ax.plot(x[done], v[done], "o", color=colour, ms=6, zorder=3)
        ax.plot(x[~done], v[~done], "x", color=colour, ms=7, mew=1.6, zorder=3)
        # Running best over complete trials only: a stopped trial's score covers fewer inner
        # splits, so it is not comparable (and the search never selects it).
        best = np.fmax.accumulate(np.where(done & ~np.isnan(v), v, -np.inf))
        best = np.where(np.isinf(best), np.nan, best)
        # One extra step to x + 0.5 so the last trial's best is drawn as a segment, not a point.
        (line,) = ax.step(np.append(x, x[-1] + 0.5), np.append(best, best[-1]), where="post",
                          color=colour, lw=1.5, label=f"outer {outer}: best so far")  # fmt: skip
        handles.append(line)
    marker = dict(color="0.3", ls="none")
    handles += [
        Line2D([], [], marker="o", ms=6, label="complete trial", **marker),
        Line2D([], [], marker="x", ms=7, mew=1.6, label="stopped early (ASHA),\npartial score",
               **marker),
    ]  # fmt: skip
    if not rows:
        ax.text(0.5, 0.5, "no trials", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.5, longest + 0.5)
    # Integer ticks 1, 1 + s, 1 + 2s, ... with MaxNLocator's choice of the step s.
    ticks = MaxNLocator(integer=True, steps=[1, 2, 5, 10]).tick_values(1, longest)
    step = max(1, round(ticks[1] - ticks[0])) if len(ticks) > 1 else 1
    ax.xaxis.set_major_locator(FixedLocator(np.arange(1, longest + 1, step)))
    ax.set_xlabel("trial (in order, per outer fold)")
    ax.set_ylabel(f"inner-CV {label or metric}")
    ax.grid(True, color="0.92", zorder=0)
    n_stopped = sum(not r["complete"] for r in rows)
    ax.set_title(f"optimisation history: {len(rows)} trials ({n_stopped} stopped early), "
                 f"{len(folds)} outer fold{'s' * (len(folds) != 1)}", fontsize=10)  # fmt: skip
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return fig


def history_png(rows: list[dict], metric: str = "cv_metric", *, label: str | None = None) -> bytes:
    """Each trial's inner-CV score in trial order, per outer fold, with the running best.

    ``rows``: dicts with at least ``outer``, ``trial``, ``metric`` and ``complete``, in trial
    order within each outer fold. One colour per outer fold, used for its complete trials
    (filled circles), its trials stopped early by ASHA (crosses, at their partial score) and its
    best-so-far step line (over complete trials). ``label`` names the metric on the y axis
    ("inner-CV <label>"; default: ``metric``).
    """
    return _png(_history_figure(rows, metric, label))


# --- parameter importances -----------------------------------------------------------------------


def _complete(rows: list[dict], metric: str) -> list[dict]:
    return [r for r in rows if r["complete"] and not math.isnan(_value(r, metric))]


def _fanova(rows: list[dict], distributions: dict, metric: str) -> tuple[dict[str, float], str]:
    """(importances, why they are empty) - the reason is "" when they are not."""
    complete = _complete(rows, metric)
    n = len(complete)
    if not distributions:
        return {}, f"{_NOTE} (no parameter was searched)."
    if n < MIN_IMPORTANCE_TRIALS or len({_value(r, metric) for r in complete}) < 2:
        return {}, (
            f"{_NOTE} (needs >= {MIN_IMPORTANCE_TRIALS} complete trials with different values; "
            f"{n} here{', all equal' if n >= MIN_IMPORTANCE_TRIALS else ''})."
        )
    try:
        import optuna
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize")
        for r in complete:
            params = {k: r[k] for k in distributions}
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions=distributions, value=_value(r, metric)))  # fmt: skip
        # Seeded: the forest is random, and the same trials should give the same report.
        imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except ImportError as e:  # Optuna's fANOVA needs scikit-learn
        return {}, f"{_NOTE} (Optuna's fANOVA needs scikit-learn: {e})."
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        # e.g. "zero total variance": no searched parameter took different values
        return {}, f"{_NOTE} (Optuna's fANOVA failed on these {n} trials: {e})."
    out = {str(k): float(v) for k, v in imp.items()}
    if not out or not all(math.isfinite(v) for v in out.values()):
        return {}, f"{_NOTE} (Optuna's fANOVA gave no finite importances for {n} trials)."
    return out, ""


def importances(rows: list[dict], distributions: dict, metric: str) -> dict[str, float]:
    """Optuna's fANOVA importances (summing to 1, largest first) of the searched parameters
    ``distributions`` (name -> optuna distribution) over the complete trials in ``rows``.

    ``{}`` when they cannot be computed: fewer than 3 complete trials, no distributions, every
    trial with the same score, or fANOVA failing (``importance_note`` says which).
    """
    return _fanova(rows, distributions, metric)[0]


def importance_note(rows: list[dict], distributions: dict, metric: str) -> str:
    """report.md's sentence on why ``importances`` is empty ("" when it is not)."""
    return _fanova(rows, distributions, metric)[1]


def importance_png(imp: dict[str, float]) -> bytes | None:
    """Horizontal bars, largest on top, with the value on each bar; None when ``imp`` is empty
    (write a sentence instead of an empty figure)."""
    if not imp:
        return None
    names = sorted(imp, key=imp.get)
    vals = [imp[k] for k in names]
    fig = _figure(6.0, 1.1 + 0.35 * len(names))
    ax = fig.add_subplot()
    ax.barh(names, vals, color="C0")
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(max(vals), 1e-9) * 1.18)
    ax.set_xlabel("importance (Optuna fANOVA, sums to 1)")
    ax.set_title(f"parameter importances ({len(names)} searched)", fontsize=10)
    return _png(fig)


# --- prediction timeline -------------------------------------------------------------------------


def timeline_png(result: dict, class_names: list[str]) -> bytes:
    """Emotion probabilities over time (clip stream, one line per class) + the final scores.

    ``result``: one ``ok`` item of ``distributed.predict`` (``id``, ``label``, ``probabilities``
    and ``timeline``, a list of clips with frame range, times and probabilities).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=DPI)
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2, width_ratios=(3, 1))
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
    return _png(fig)


# --- comparison of runs --------------------------------------------------------------------------


def comparison_png(names: list[str], outers: list[int], uars: dict, cis: dict) -> bytes:
    """Each run's UAR on every outer fold (a line per fold joins the runs: the pairing) and its
    mean with the 95% bootstrap interval."""
    fig = _figure(max(4.0, 1.3 * len(names) + 2.0), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    for k in range(len(outers)):
        ax.plot(x, [uars[n][k] for n in names], "o-", color="0.7", lw=1, ms=4,
                label="outer folds" if k == 0 else None)  # fmt: skip
    means = np.array([np.mean(uars[n]) for n in names])
    lo = means - np.array([cis[n]["uar"][0] for n in names])
    hi = np.array([cis[n]["uar"][1] for n in names]) - means
    ax.errorbar(x, means, yerr=[lo, hi], fmt="D", color="C0", capsize=5, ms=7,
                label="mean, 95% bootstrap interval")  # fmt: skip
    ax.set_xticks(x, names)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("UAR on the outer test fold")
    ax.set_title(f"{len(outers)} outer folds, the same test items for every run", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
