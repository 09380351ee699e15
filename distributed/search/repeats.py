"""Repeated nested cross-validation (``tune --repeats R``): the whole nested CV R times.

Where the outer folds are drawn by us (the ``subjects`` protocol: subject-independent,
class-stratified folds), repeat r re-draws them (outer and inner) with seed
``REPEAT_SEED * r`` and the same fold counts; repeat 0 is the stored protocol itself. Where the
folds are fixed (reference lists such as the paper's CK+ lists, a release's official sets), the
folds stay and repeat r trains with seed ``seed + r``: the spread over repeats is then training
variance only, and the report says so.

Each repeat is a complete run of its own in ``STORAGE/NAME/repeatR/`` (its ``search.json``,
ledgers, results and ``predictions.csv``: ``distributed.compare`` compares repeats like runs,
and ``--resume`` continues each repeat where it stopped). ``STORAGE/NAME/results/report.md``
separates the spread over repeats (std of the R repeat means) from the spread over folds (mean
of the within-repeat stds).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from datasets import protocols, shards, storage
from distributed.core.commands import UsageError
from distributed.search import events, run_record
from distributed.search.driver import SearchPlan, run_search

REPEAT_SEED = 7919  # repeat r of a drawn protocol draws its folds with seed REPEAT_SEED * r
DRAWN = ("subjects",)  # protocol keys whose folds we draw (the others are fixed lists)


def redraw(plan: SearchPlan, seed: int) -> protocols.Protocol:
    """The plan's subject-independent protocol drawn again with ``seed`` (same fold counts)."""
    table = shards.read_table(plan.shards, columns=["id", "subject", "label"]).to_pydict()
    n_inner = len(plan.protocol.outer[0].inner)
    try:
        return protocols.subjects(table["id"], table["subject"], table["label"],
                                  len(plan.protocol.outer), n_inner, seed)  # fmt: skip
    except protocols.ProtocolError as err:
        raise UsageError(f"--repeats: the folds cannot be drawn again ({err})") from None


def repeat_plans(plan: SearchPlan, repeats: int) -> list[tuple[SearchPlan, str]]:
    """(plan, how its folds and seed were chosen) of every repeat."""
    drawn = plan.protocol_key in DRAWN
    out = []
    for r in range(repeats):
        root = storage.join(plan.root, f"repeat{r}")
        if r == 0:
            out.append((replace(plan, root=root), "the stored folds"))
        elif drawn:
            seed = REPEAT_SEED * r
            # a key the shards do not hold: its checkpoints name folds no stored protocol has
            # (evaluate then warns that it cannot tell their training rows, never misjudges)
            key = f"{plan.protocol_key}-repeat{r}-seed{seed}"
            out.append((replace(plan, root=root, protocol=redraw(plan, seed), protocol_key=key),
                        f"folds drawn again with seed {seed}"))  # fmt: skip
        else:
            base = plan.base.override(where="--repeats", seed=plan.base.seed + r)
            out.append((replace(plan, root=root, base=base),
                        f"the same fixed folds, training seed {base.seed}"))  # fmt: skip
    return out


def _folds_csv(root: str) -> list[dict]:
    text = storage.read_bytes(storage.join(root, "results", "folds.csv")).decode()
    return list(csv.DictReader(io.StringIO(text)))


def run_repeats(plan: SearchPlan, repeats: int, fingerprint: Callable[[SearchPlan], dict]) -> str:
    """Every repeat (each resumed where it stopped on ``--resume``), then the summary report;
    returns its text. ``fingerprint(plan)``: what each repeat's search.json records."""
    rows = []
    for r, (rplan, how) in enumerate(repeat_plans(plan, repeats)):
        resume = plan.resume and storage.exists(storage.join(rplan.root, run_record.SEARCH_FILE))
        run_record.check(rplan.root, fingerprint(rplan), resume)
        events.console.emit(f"repeat {r + 1}/{repeats}: {how} ({rplan.root})")
        run_search(replace(rplan, resume=resume))
        for f in _folds_csv(rplan.root):
            rows.append({"repeat": r, "how": how, "outer": int(f["outer"]),
                         "war": float(f["war"]), "uar": float(f["uar"])})  # fmt: skip
    text = summary(plan, repeats, rows)
    storage.atomic_write_bytes(storage.join(plan.root, "results", "report.md"), text.encode())
    return text


def spreads(rows: list[dict], metric: str, repeats: int) -> dict:
    """Mean over every (repeat, fold) score, the std of the repeat means (spread over repeats)
    and the mean of the within-repeat stds over folds (spread over folds)."""
    per = [np.array([x[metric] for x in rows if x["repeat"] == r]) for r in range(repeats)]
    means = np.array([p.mean() for p in per])
    return {
        "mean": float(np.mean(np.concatenate(per))),
        "over_repeats": float(means.std()),
        "over_folds": float(np.mean([p.std() for p in per])),
        "repeat_means": means,
        "repeat_stds": np.array([p.std() for p in per]),
    }


def summary(plan: SearchPlan, repeats: int, rows: list[dict]) -> str:
    drawn = plan.protocol_key in DRAWN
    war, uar = spreads(rows, "war", repeats), spreads(rows, "uar", repeats)
    n_folds = len({x["outer"] for x in rows})
    what = (
        "outer and inner folds drawn again for each repeat (subject-independent)"
        if drawn
        else "the protocol's fixed folds in every repeat, a different training seed each: the "
        "spread over repeats is training variance only, not fold-sampling variance"
    )
    lines = [
        f"# Repeated nested cross-validation: {plan.manifest.kind}, {repeats} repeats",
        "",
        f"- protocol: {plan.protocol_key} ({plan.protocol.name}); {what}",
        f"- outer folds per repeat: {n_folds}; each repeat is a complete run in `repeatR/` "
        "(its own report.md and predictions.csv)",
        "",
        f"**WAR {war['mean']:.3f}, UAR {uar['mean']:.3f}** (mean over {repeats} repeats × "
        f"{n_folds} outer folds)",
        "",
        f"- spread over repeats (std of the repeat means): WAR {war['over_repeats']:.3f}, "
        f"UAR {uar['over_repeats']:.3f}",
        f"- spread over folds (mean of the within-repeat stds): WAR {war['over_folds']:.3f}, "
        f"UAR {uar['over_folds']:.3f}",
        "",
        "| repeat | folds and seed | WAR mean ± std over folds | UAR mean ± std over folds |",
        "|---|---|---|---|",
    ]
    hows = {x["repeat"]: x["how"] for x in rows}
    for r in range(repeats):
        lines.append(
            f"| {r} | {hows[r]} | {war['repeat_means'][r]:.3f} ± {war['repeat_stds'][r]:.3f} "
            f"| {uar['repeat_means'][r]:.3f} ± {uar['repeat_stds'][r]:.3f} |"
        )
    return "\n".join(lines) + "\n"
