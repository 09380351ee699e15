"""Compare finished searches on the same outer test folds: paired tests and intervals.

Each RUN is a finished ``distributed.tune`` run (``STORAGE/NAME``, a folder or a URI). Its
``results/predictions.csv`` (one row per outer-test item) and ``search.json`` (what the run
depended on) are read. Runs on other shards, another protocol or other classes are refused with
one line naming the difference (exit 2); outer folds that not every run has are left out, and
the report says so. Written to ``--out`` (default ``compare``): ``compare.md`` (per-fold WAR and
UAR, mean ± std, 95% bootstrap intervals, per pair the paired t-test and exact Wilcoxon test
over folds, McNemar's exact test on the items, the interval of the difference, per-class recall,
and a sentence on what can be concluded), ``compare.png``, and with ``--format csv`` or
``latex`` also ``compare.csv`` or ``compare.tex`` (printed as well). The statistics:
``distributed.results.comparison``.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys

from datasets import storage
from distributed.core import commands
from distributed.results.comparison import (
    CompareError,
    Run,
    compare,
    latex,
    markdown,
    read_predictions,
)
from distributed.results.comparison import table_rows as csv_rows
from distributed.results.report import PREDICTIONS, _csv
from distributed.search.run_record import SEARCH_FILE


def read_run(path: str, name: str) -> Run:
    """A finished run's predictions and fingerprint; one-line errors for what is missing."""
    root = path if storage.is_uri(path) else posixpath.abspath(path)
    preds = storage.join(root, "results", PREDICTIONS)
    if not storage.exists(preds):
        if storage.exists(storage.join(root, "results", "report.md")):
            raise commands.UsageError(
                f"{root}: no results/{PREDICTIONS} (a run from before per-item predictions were "
                "kept); run it again to compare it"
            )
        raise commands.UsageError(f"{root}: not a finished distributed.tune run (no results/)")
    try:
        record = json.loads(storage.read_bytes(storage.join(root, SEARCH_FILE)))
        fingerprint = record["fingerprint"]
    except (OSError, FileNotFoundError, ValueError, KeyError) as err:
        raise commands.UsageError(f"{root}: no readable {SEARCH_FILE} ({err})") from None
    classes, folds = read_predictions(storage.read_bytes(preds).decode(), preds)
    model = str(fingerprint.get("config", {}).get("model", ""))
    return Run(name, root, classes, folds, fingerprint, model)


def _names(paths: list[str], given: str | None) -> list[str]:
    if given:
        names = [n.strip() for n in given.split(",")]
        if len(names) != len(paths) or len(set(names)) != len(names) or not all(names):
            raise commands.UsageError(
                f"--names: {len(paths)} distinct names expected (one per run), got {given!r}"
            )
        return names
    names = [posixpath.basename(p.rstrip("/")) or p for p in paths]
    if len(set(names)) != len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def run_compare(args: argparse.Namespace) -> str:
    from distributed.results.plots import comparison_png

    if len(args.runs) < 2:
        raise commands.UsageError("give at least two runs to compare")
    if len(set(args.runs)) != len(args.runs):
        raise commands.UsageError("the same run is given twice")
    names = _names(args.runs, args.names)
    runs = [read_run(p, n) for p, n in zip(args.runs, names)]  # (nothing created for bad runs)
    out = args.out if storage.is_uri(args.out) else posixpath.abspath(args.out)
    storage.ensure_writable_dir(out, "--out folder")
    try:
        result = compare(runs, n_boot=args.resamples, seed=args.seed)
    except CompareError as err:
        raise commands.UsageError(str(err)) from None
    text = markdown(result)
    write = storage.atomic_write_bytes
    write(storage.join(out, "compare.md"), text.encode())
    uars = {n: result["scores"][n]["uar"] for n in names}
    write(storage.join(out, "compare.png"), comparison_png(names, result["outers"], uars,
                                                           result["cis"]))  # fmt: skip
    shown = text
    if args.format == "csv":
        shown = _csv(csv_rows(result)).decode()
        write(storage.join(out, "compare.csv"), shown.encode())
    elif args.format == "latex":
        shown = latex(result)
        write(storage.join(out, "compare.tex"), shown.encode())
    print(shown, end="")
    print(f"written: {storage.join(out, 'compare.md')}, compare.png", file=sys.stderr)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = commands.Parser(
        prog="python -m distributed.compare",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished tune runs (STORAGE/NAME)")
    p.add_argument("--names", help="comma-separated names for the runs (default: folder names)")
    p.add_argument("--out", default="compare", help="folder for compare.md/.png (path or URI)")
    p.add_argument("--format", choices=("md", "csv", "latex"), default="md",
                   help="what is printed (csv and latex are also written)")  # fmt: skip
    p.add_argument("--resamples", type=commands.count, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=commands.natural, default=0, help="bootstrap seed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run_compare(args)
        return 0

    return commands.run_stoppable(body, commands.start_over("distributed.compare", argv))


if __name__ == "__main__":
    sys.exit(main())
