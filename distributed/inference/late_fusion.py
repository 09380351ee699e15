"""Late-fusion arithmetic (numpy only): the fusion rules, the weight chosen on validation
predictions, pairing two branches' predictions by id, and the report's table."""

from __future__ import annotations

import numpy as np

from distributed.results.metrics import confusion, uar, war

RULES = ("log", "linear")
EPS = 1e-6


def fuse(p_face: np.ndarray, p_body: np.ndarray, w: float, rule: str = "log") -> np.ndarray:
    """Fused class probabilities (N, classes) from two (N, classes) probability arrays."""
    if rule == "linear":
        return w * p_face + (1.0 - w) * p_body
    if rule != "log":
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    z = w * np.log(p_face + EPS) + (1.0 - w) * np.log(p_body + EPS)  # (N, classes)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def scores(y: np.ndarray, probs: np.ndarray, num_classes: int) -> dict[str, float]:
    cm = confusion(y, probs.argmax(axis=1), num_classes)
    return {"war": war(cm), "uar": uar(cm), "n": int(len(y))}


def choose_weight(
    y: np.ndarray,
    p_face: np.ndarray,
    p_body: np.ndarray,
    rule: str = "log",
    grid: np.ndarray | None = None,
) -> tuple[float, list[dict]]:
    """The grid weight with the best UAR (then WAR; remaining ties: nearest 0.5), and the table."""
    grid = np.linspace(0.0, 1.0, 21) if grid is None else np.asarray(grid, float)
    k = p_face.shape[1]
    table = [{"w": float(w), **scores(y, fuse(p_face, p_body, w, rule), k)} for w in grid]
    best = max(table, key=lambda r: (round(r["uar"], 9), round(r["war"], 9), -abs(r["w"] - 0.5)))
    return best["w"], table


def pair(ids_a, y_a, p_a, ids_b, y_b, p_b):
    """Align two branches' predictions on their common ids: (ids, y, p_a, p_b)."""
    index_b = {i: n for n, i in enumerate(ids_b)}
    common = [i for i in ids_a if i in index_b]
    if not common:
        raise ValueError("the two branches share no id: write both sources with the same stems")
    ia = np.array([ids_a.index(i) for i in common])
    ib = np.array([index_b[i] for i in common])
    if not np.array_equal(np.asarray(y_a)[ia], np.asarray(y_b)[ib]):
        raise ValueError("paired items disagree on their labels")
    return common, np.asarray(y_a)[ia], p_a[ia], p_b[ib]


def markdown(report: dict) -> str:
    cis = report.get("intervals") or {}
    lines = [
        f"# Face + body late fusion ({report['rule']} rule)",
        "",
        "| branch | WAR mean ± std | UAR mean ± std | pooled WAR | pooled UAR | 95% CI WAR "
        "| 95% CI UAR |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("face", "face only"), ("body", "body only"), ("fused", "fused")):
        s = report["summary"][key]
        ci = cis.get(key)
        band = (
            f"{ci['war'][0]:.3f}–{ci['war'][1]:.3f} | {ci['uar'][0]:.3f}–{ci['uar'][1]:.3f}"
            if ci
            else "– | –"
        )
        lines.append(
            f"| {label} | {s['war_mean']:.3f} ± {s['war_std']:.3f} | "
            f"{s['uar_mean']:.3f} ± {s['uar_std']:.3f} | {s['pooled']['war']:.3f} | "
            f"{s['pooled']['uar']:.3f} | {band} |"
        )
    gain = cis.get("fused_minus_best")
    if gain:
        lo, hi = gain["uar"]
        verdict = "excludes" if lo > 0 or hi < 0 else "includes"
        lines += [
            "",
            f"Fused minus the better branch ({gain['branch']}): UAR {lo:+.3f} to {hi:+.3f}, WAR "
            f"{gain['war'][0]:+.3f} to {gain['war'][1]:+.3f} (95% bootstrap intervals, test items "
            f"resampled within each outer fold, paired); the UAR interval {verdict} 0.",
        ]
    lines += [
        "",
        "| outer fold | w (chosen on inner val) | face UAR | body UAR | fused UAR | n |",
        "|---|---|---|---|---|---|",
    ]
    for f in report["folds"]:
        lines.append(
            f"| {f['outer']} | {f['w']:.2f} | {f['face']['uar']:.3f} | "
            f"{f['body']['uar']:.3f} | {f['fused']['uar']:.3f} | {f['fused']['n']} |"
        )
    return "\n".join(lines) + "\n"
