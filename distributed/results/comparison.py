"""Comparing runs on the same outer test folds: per-fold scores, paired tests, bootstrap intervals.

Ray-free and torch-free: it reads the per-item predictions a search writes
(``results/predictions.csv``: one row per outer-test item) and the run's fingerprint
(``search.json``), and computes

- per outer fold, WAR and UAR of each run; mean ± std over folds;
- for each pair of runs, over the folds they share: the per-fold differences, the paired t-test
  (``scipy.stats.ttest_rel``) and the exact Wilcoxon signed-rank test (``scipy.stats.wilcoxon``)
  over folds, McNemar's exact test on the pooled items (``scipy.stats.binomtest`` on the
  discordant pairs) and a 95% bootstrap interval of the difference in mean WAR and UAR;
- per-class recall of each run and the per-class differences.

The bootstrap resamples test items within each outer fold (stratified by fold, never mixing
folds), the same draw for both runs of a pair (paired), ``n_boot`` times from a seeded
generator; the statistic is the mean over folds of the per-fold score, the headline number of
a report; the interval is the 2.5th and 97.5th percentiles.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np

from distributed.results.metrics import confusion, uar, war

N_BOOT = 2000
LEVEL = 0.95


@dataclass
class Fold:
    """One run's predictions on one outer test fold, items sorted by id."""

    ids: np.ndarray  # str
    y: np.ndarray  # int true class
    pred: np.ndarray  # int predicted class

    def scores(self, num_classes: int) -> tuple[float, float]:
        cm = confusion(self.y, self.pred, num_classes)
        return war(cm), uar(cm)


@dataclass
class Run:
    """A finished search as the comparison reads it."""

    name: str
    path: str
    classes: list[str]
    folds: dict[int, Fold]
    fingerprint: dict = field(default_factory=dict)
    model: str = ""

    def scores(self, outers: list[int]) -> dict[str, np.ndarray]:
        pairs = [self.folds[o].scores(len(self.classes)) for o in outers]
        return {"war": np.array([p[0] for p in pairs]), "uar": np.array([p[1] for p in pairs])}

    def recall(self, outers: list[int]) -> np.ndarray:
        """Per-class recall over the pooled items of ``outers`` (NaN for an absent class)."""
        k = len(self.classes)
        cm = sum(confusion(self.folds[o].y, self.folds[o].pred, k) for o in outers)
        support = cm.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


# ------------------------------------------------------------------ bootstrap


def _fold_scores(y: np.ndarray, pred: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """(WAR, UAR) of each resample: ``idx`` is (B, n) indices into one fold's items."""
    yy, hit = y[idx], (pred[idx] == y[idx])
    counts = np.zeros((len(idx), k))
    hits = np.zeros((len(idx), k))
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    np.add.at(counts, (rows, yy.ravel()), 1)
    np.add.at(hits, (rows, yy.ravel()), hit.ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    present = counts > 0
    uars = np.nansum(recall, axis=1) / np.maximum(present.sum(axis=1), 1)
    return np.stack([hit.mean(axis=1), uars], axis=1)


def bootstrap(
    runs: list[Run], outers: list[int], n_boot: int = N_BOOT, seed: int = 0, chunk: int = 250
) -> np.ndarray:
    """Resampled mean-over-folds (WAR, UAR) of each run: an array (len(runs), n_boot, 2).

    The runs are paired: each resample draws the same items (within each fold) for every run,
    so differences between runs are differences on the same items."""
    rng = np.random.default_rng(seed)
    k = len(runs[0].classes)
    out = np.zeros((len(runs), n_boot, 2))
    for o in outers:
        n = len(runs[0].folds[o].ids)
        for start in range(0, n_boot, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
            for r, run in enumerate(runs):
                f = run.folds[o]
                out[r, start : start + len(idx)] += _fold_scores(f.y, f.pred, idx, k)
    return out / len(outers)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of ``samples``."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def run_intervals(run: Run, outers: list[int], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """{"war": (lo, hi), "uar": (lo, hi)}: the 95% bootstrap interval of one run's mean scores."""
    boot = bootstrap([run], outers, n_boot, seed)[0]
    return {"war": interval(boot[:, 0]), "uar": interval(boot[:, 1])}


# ------------------------------------------------------------------ tests over folds and items


def wilcoxon_floor(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with ``n``
    non-zero differences: every sign alike, 2 / 2**n."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def paired_tests(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired t-test and exact Wilcoxon signed-rank test of per-fold scores ``a`` vs ``b``."""
    from scipy import stats

    d = a - b
    out = {"n": len(d), "mean_diff": float(d.mean()) if len(d) else math.nan}
    if len(d) >= 2 and np.ptp(d) > 0:
        out["t"], out["t_p"] = (float(v) for v in stats.ttest_rel(a, b))
    elif len(d) >= 2 and d[0] != 0:  # the same non-zero difference on every fold: no spread
        out["t"], out["t_p"] = math.copysign(math.inf, d[0]), 0.0
    else:
        out["t"], out["t_p"] = math.nan, math.nan
    nonzero = int(np.count_nonzero(d))
    out["wilcoxon_n"] = nonzero
    out["wilcoxon_floor"] = wilcoxon_floor(nonzero)
    if nonzero == 0:
        out["w"], out["w_p"] = math.nan, 1.0 if len(d) else math.nan
    else:
        res = stats.wilcoxon(d[d != 0], method="exact")
        out["w"], out["w_p"] = float(res.statistic), float(res.pvalue)
    return out


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired item outcomes: a binomial test of the discordant pairs."""
    from scipy import stats

    b = int(np.sum(correct_a & ~correct_b))  # A right, B wrong
    c = int(np.sum(~correct_a & correct_b))
    p = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"a_only": b, "b_only": c, "p": p}


# ------------------------------------------------------------------ reading runs


class CompareError(ValueError):
    """Runs that cannot be compared (other data, other protocol, no shared items)."""


def read_predictions(text: str, where: str) -> tuple[list[str], dict[int, Fold]]:
    """(class names, outer -> Fold) from a predictions.csv's text."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise CompareError(f"{where}: no predictions")
    need = {"outer", "id", "true", "predicted"}
    if not need <= set(rows[0]):
        raise CompareError(f"{where}: not a predictions file (columns {sorted(need)} expected)")
    classes = [k[2:] for k in rows[0] if k.startswith("p_")]
    index = {c: i for i, c in enumerate(classes)}
    by: dict[int, list[dict]] = {}
    for r in rows:
        by.setdefault(int(r["outer"]), []).append(r)
    folds = {}
    for o, rs in sorted(by.items()):
        rs.sort(key=lambda r: r["id"])
        try:
            y = np.array([index[r["true"]] for r in rs])
            pred = np.array([index[r["predicted"]] for r in rs])
        except KeyError as err:
            raise CompareError(f"{where}: class {err} has no probability column") from None
        folds[o] = Fold(np.array([r["id"] for r in rs]), y, pred)
    return classes, folds


def check_comparable(runs: list[Run]) -> tuple[list[int], list[str]]:
    """The outer folds every run has, and notes; ``CompareError`` naming what differs when the
    runs are not on the same shards, protocol and classes."""
    first = runs[0]
    for run in runs[1:]:
        for what, key in (("shards", "shards"), ("protocol", "protocol")):
            a, b = first.fingerprint.get(key, {}), run.fingerprint.get(key, {})
            same = (a.get("digest"), a.get("rows"), a.get("name"), a.get("folds")) == (
                b.get("digest"), b.get("rows"), b.get("name"), b.get("folds")
            )  # fmt: skip
            if not same:
                detail = (
                    f"{a.get('path')} ({a.get('rows')} rows) vs "
                    f"{b.get('path')} ({b.get('rows')} rows)"
                    if key == "shards"
                    else f"{a.get('name')} vs {b.get('name')}"
                    + (" (same name, other folds)" if a.get("name") == b.get("name") else "")
                )
                raise CompareError(
                    f"{first.name} and {run.name} were run on other {what}: {detail}; "
                    "only runs on the same shards and protocol can be compared"
                )
        if run.classes != first.classes:
            raise CompareError(
                f"{first.name} and {run.name} have other classes: {first.classes} vs {run.classes}"
            )
    shared = sorted(set.intersection(*(set(r.folds) for r in runs)))
    if not shared:
        raise CompareError("the runs share no outer fold")
    notes = []
    for run in runs:
        extra = sorted(set(run.folds) - set(shared))
        if extra:
            notes.append(f"{run.name}: outer folds {extra} are not in every run and are left out")
    for o in shared:
        ids = first.folds[o].ids
        for run in runs[1:]:
            if not np.array_equal(run.folds[o].ids, ids):
                raise CompareError(
                    f"outer fold {o}: {first.name} and {run.name} scored other test items"
                )
    return shared, notes


# ------------------------------------------------------------------ the comparison


@dataclass
class Pair:
    a: str
    b: str
    diffs: dict[str, np.ndarray]  # per fold, A - B
    tests: dict[str, dict]  # metric -> paired_tests
    mcnemar: dict
    ci: dict[str, tuple[float, float]]  # metric -> interval of the mean difference
    recall_diff: np.ndarray


def compare(runs: list[Run], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Everything compare.md shows, as data (see the module docstring)."""
    outers, notes = check_comparable(runs)
    scores = {r.name: r.scores(outers) for r in runs}
    boot = bootstrap(runs, outers, n_boot, seed)
    cis = {
        r.name: {m: interval(boot[i, :, j]) for j, m in enumerate(("war", "uar"))}
        for i, r in enumerate(runs)
    }
    recalls = {r.name: r.recall(outers) for r in runs}
    pairs = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            a, b = runs[i], runs[j]
            diffs = {m: scores[a.name][m] - scores[b.name][m] for m in ("war", "uar")}
            tests = {m: paired_tests(scores[a.name][m], scores[b.name][m]) for m in diffs}
            hits = [
                np.concatenate([r.folds[o].pred == r.folds[o].y for o in outers]) for r in (a, b)
            ]
            ci = {m: interval(boot[i, :, k] - boot[j, :, k]) for k, m in enumerate(diffs)}
            pairs.append(
                Pair(
                    a.name,
                    b.name,
                    diffs,
                    tests,
                    mcnemar(*hits),
                    ci,
                    recalls[a.name] - recalls[b.name],
                )  # fmt: skip
            )
    return {
        "runs": runs,
        "outers": outers,
        "notes": notes,
        "scores": scores,
        "cis": cis,
        "recalls": recalls,
        "pairs": pairs,
        "n_items": sum(len(runs[0].folds[o].ids) for o in outers),
        "n_boot": n_boot,
        "seed": seed,
    }


def conclusion(pair: Pair, n_folds: int, alpha: float = 0.05) -> str:
    """What can be concluded from one pair, in words."""
    lo, hi = pair.ci["uar"]
    t = pair.tests["uar"]
    if lo > 0 or hi < 0:
        better = pair.a if lo > 0 else pair.b
        parts = [f"the 95% interval of the UAR difference excludes 0 ({lo:+.3f} to {hi:+.3f}): "
                 f"{better} scores higher on these test items"]  # fmt: skip
    else:
        parts = [f"the 95% interval of the UAR difference includes 0 ({lo:+.3f} to {hi:+.3f}): "
                 "no difference is shown on these test items"]  # fmt: skip
    if t["wilcoxon_floor"] >= alpha:
        parts.append(
            f"with {n_folds} fold{'s' if n_folds != 1 else ''} the exact Wilcoxon test cannot "
            f"reach p < {alpha:g} (its smallest p is {t['wilcoxon_floor']:.3g}); the folds alone "
            "cannot show a difference"
        )
    elif t["w_p"] < alpha:
        parts.append(f"the Wilcoxon test over folds gives p = {t['w_p']:.3g} < {alpha:g}")
    else:
        parts.append(f"the Wilcoxon test over folds gives p = {t['w_p']:.3g} (not < {alpha:g})")
    if n_folds < 5:
        parts.append(f"a t-test on {n_folds} folds rests on an assumption of normality that so "
                     "few folds cannot check")  # fmt: skip
    m = pair.mcnemar
    parts.append(
        f"McNemar on the pooled items: {m['a_only']} right only by {pair.a}, {m['b_only']} only "
        f"by {pair.b}, p = {m['p']:.3g}"
    )
    return "; ".join(parts) + "."


def _f(v: float, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _p(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.3g}"


def markdown(result: dict) -> str:
    runs, outers = result["runs"], result["outers"]
    names = [r.name for r in runs]
    lines = ["# Comparison on the same outer test folds", ""]
    for r in runs:
        lines.append(f"- **{r.name}**: `{r.path}`" + (f" (model `{r.model}`)" if r.model else ""))
    fp = runs[0].fingerprint
    lines += [
        f"- data: `{fp.get('shards', {}).get('path')}` ({fp.get('shards', {}).get('rows')} rows); "
        f"protocol: {fp.get('protocol', {}).get('name')}; outer folds compared: {outers} "
        f"({result['n_items']} test items)",
        f"- intervals: 95% bootstrap, items resampled within each outer fold, paired across runs, "
        f"{result['n_boot']} resamples, seed {result['seed']}",
    ]
    lines += [f"- note: {n}" for n in result["notes"]]
    lines += ["", "## Scores per outer fold", ""]
    lines.append("| run | " + " | ".join(f"fold {o} WAR / UAR" for o in outers)
                 + " | mean ± std WAR | mean ± std UAR | 95% CI WAR | 95% CI UAR |")  # fmt: skip
    lines.append("|---" * (len(outers) + 5) + "|")
    for name in names:
        s, ci = result["scores"][name], result["cis"][name]
        cells = [f"{w:.3f} / {u:.3f}" for w, u in zip(s["war"], s["uar"])]
        lines.append(
            f"| {name} | " + " | ".join(cells)
            + f" | {s['war'].mean():.3f} ± {s['war'].std():.3f}"
            f" | {s['uar'].mean():.3f} ± {s['uar'].std():.3f}"
            f" | {ci['war'][0]:.3f}–{ci['war'][1]:.3f} | {ci['uar'][0]:.3f}–{ci['uar'][1]:.3f} |"
        )  # fmt: skip
    for pair in result["pairs"]:
        lines += ["", f"## {pair.a} vs {pair.b}", ""]
        lines.append("| | " + " | ".join(f"fold {o}" for o in outers)
                     + " | mean | 95% CI | paired t (p) | Wilcoxon exact (p) |")  # fmt: skip
        lines.append("|---" * (len(outers) + 5) + "|")
        for m in ("war", "uar"):
            t = pair.tests[m]
            lines.append(
                f"| Δ{m.upper()} | " + " | ".join(_f(d, True) for d in pair.diffs[m])
                + f" | {_f(t['mean_diff'], True)} | {_f(pair.ci[m][0], True)} to "
                f"{_f(pair.ci[m][1], True)} | {_f(t['t'])} ({_p(t['t_p'])}) | "
                f"{_f(t['w'])} ({_p(t['w_p'])}) |"
            )  # fmt: skip
        m = pair.mcnemar
        lines += [
            "",
            f"McNemar's exact test (pooled items): {m['a_only']} right only by {pair.a}, "
            f"{m['b_only']} right only by {pair.b}, p = {_p(m['p'])}.",
            "",
            f"**What this shows:** {conclusion(pair, len(outers))}",
        ]
    lines += ["", "## Per-class recall (pooled outer test items)", ""]
    lines.append("| class | " + " | ".join(names)
                 + "".join(f" | Δ {p.a} − {p.b}" for p in result["pairs"]) + " |")  # fmt: skip
    lines.append("|---" * (1 + len(names) + len(result["pairs"])) + "|")
    for k, c in enumerate(runs[0].classes):
        cells = [_f(result["recalls"][n][k]) for n in names]
        cells += [_f(p.recall_diff[k], True) for p in result["pairs"]]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "How to read this: the folds' test items are the same for every run, so differences are "
        "paired. Tests over folds see only as many values as there are folds; the bootstrap "
        "interval and McNemar's test use every test item but treat the items of a fold as "
        "independent draws, and none of them covers the variance from re-drawing the folds or "
        "re-training: `tune --repeats R` measures that (its report separates the spread over "
        "repeats from the spread over folds).",
    ]
    return "\n".join(lines) + "\n"


def table_rows(result: dict) -> list[dict]:
    """One row per (run, outer fold) and one per run's mean: what ``--format csv`` writes."""
    rows = []
    for r in result["runs"]:
        s, ci = result["scores"][r.name], result["cis"][r.name]
        for o, w, u in zip(result["outers"], s["war"], s["uar"]):
            rows.append({"run": r.name, "outer": o, "war": w, "uar": u})
        rows.append({"run": r.name, "outer": "mean", "war": s["war"].mean(),
                     "uar": s["uar"].mean(), "war_std": s["war"].std(), "uar_std": s["uar"].std(),
                     "war_ci_low": ci["war"][0], "war_ci_high": ci["war"][1],
                     "uar_ci_low": ci["uar"][0], "uar_ci_high": ci["uar"][1]})  # fmt: skip
    return rows


def latex(result: dict) -> str:
    """A booktabs table for a paper: mean ± std and the 95% interval of each run."""
    lines = [
        r"\begin{tabular}{lcccc}",
        r"\toprule",
        r"Model & WAR & 95\% CI & UAR & 95\% CI \\",
        r"\midrule",
    ]
    for r in result["runs"]:
        s, ci = result["scores"][r.name], result["cis"][r.name]
        name = r.name.replace("_", r"\_")
        lines.append(
            f"{name} & {s['war'].mean():.3f} $\\pm$ {s['war'].std():.3f} & "
            f"[{ci['war'][0]:.3f}, {ci['war'][1]:.3f}] & {s['uar'].mean():.3f} $\\pm$ "
            f"{s['uar'].std():.3f} & [{ci['uar'][0]:.3f}, {ci['uar'][1]:.3f}] \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
