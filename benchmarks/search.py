"""Search-efficiency benchmark (issue 6): Optuna TPE + ASHA vs an exhaustive grid, same space.

    .venv/bin/python benchmarks/search.py            # 18-point grid x 8 epochs, TPE+ASHA x 3 seeds
    .venv/bin/python benchmarks/search.py --quick    # 4 epochs, one TPE+ASHA seed
    .venv/bin/python benchmarks/search.py --protocol epochs   # ASHA rungs every epoch
    .venv/bin/python benchmarks/search.py --smoke    # a 2-point grid, 1 epoch, up to 2 TPE trials

Task: the synthetic gesture set (``datasets.synthetic_gesture.generate_gestures``), missing
joints filled as preprocessing does, the representation built once per kind with
``datasets.representations.build_representation`` (S = 32, L = 48), the ``accm`` model of
``models``, on the inner, subject-disjoint splits of outer fold 0 (``datasets.folds.nested_splits``,
3 outer x 2 inner). One trial-epoch = one epoch of one configuration on every inner split: the
unit of compute.

Two protocols (``--protocol``):

- ``folds`` (default; what ``distributed.tune`` does): a trial trains the splits one after the
  other, E epochs each, and after each split reports the running mean of the splits' best
  validation UAR; ASHA's time is ``folds_done`` (grace 1 split, factor 2). A configuration's score
  is the mean best-epoch validation UAR over the splits.
- ``epochs``: the splits are trained side by side and the mean validation UAR of the current
  epoch is reported after every epoch; ASHA's time is the epoch (grace 1, factor 2, max E). A
  configuration's score is the mean UAR after E epochs.

Space: representation {timeline, potion} x ACCM width {8, 16, 32} x Adam lr {3e-4, 3e-3, 3e-2}
= 18 points. The grid trains all 18 for the full budget (18 E trial-epochs). TPE + ASHA: Ray Tune
with the real ``OptunaSearch`` (Optuna's TPE sampler, seeded, 5 random start-up trials instead of
Optuna's default 10, which would be most of an 18-point space) behind a ``ConcurrencyLimiter``
and ``ASHAScheduler``, the same space as categorical choices, stopped as soon as a trial that
finished its full budget scores within 1 point (0.01) of the grid's best. Only full-budget scores
count (the grid's best is a full-budget score too). Target: the trial-epochs TPE + ASHA needs
<= 35% of the grid's (median over seeds).

Both searches run as Ray Tune function trainables (2 at a time, one torch thread each) with a
plain in-process torch loop: no TorchTrainer per trial here (``distributed.tune`` uses one), whose
fixed start-up cost would dwarf these tiny trials but is the same for both searches. Training is
deterministic per configuration, so a configuration scores the same in both searches (checked).
Compute counts what was reported; a trial ASHA stops may have begun its next epoch or split,
which is not counted. The machine is shared: the load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

_util.ensure_repo_on_path()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distributed.core.runtime import print_table  # noqa: E402

METRIC = "cv_uar"
TOLERANCE = 0.01


@dataclass(frozen=True)
class SearchBench:
    """Data, space and budgets of one run."""

    subjects: int = 6
    per_class: int = 4
    rep_size: int = 32
    rep_length: int = 48
    se_reduction: int = 4
    batch_size: int = 16
    epochs: int = 8
    representations: tuple[str, ...] = ("timeline", "potion")
    widths: tuple[int, ...] = (8, 16, 32)
    lrs: tuple[float, ...] = (3e-4, 3e-3, 3e-2)
    tpe_samples: int = 18  # cap on TPE trials (the search usually stops earlier)
    startup_trials: int = 5  # TPE's random start (Optuna's default, 10, is most of 18 points)
    seeds: tuple[int, ...] = (0, 1, 2)
    concurrency: int = 2
    protocol: str = "folds"  # "folds": distributed.tune's rungs; "epochs": a rung per epoch

    @property
    def grid_size(self) -> int:
        return len(self.representations) * len(self.widths) * len(self.lrs)


FULL = SearchBench()
QUICK = SearchBench(epochs=4, seeds=(0,))
# Smoke: both searches and the report on a 2-point space, 1 epoch, toy representations.
SMOKE = SearchBench(
    per_class=1, rep_size=16, rep_length=16, epochs=1, representations=("timeline",),
    widths=(8, 16), lrs=(3e-3,), tpe_samples=2, startup_trials=1, seeds=(0,),
)  # fmt: skip


def build_data(cfg: SearchBench) -> dict:
    """Representations of every sequence, labels and the inner splits of outer fold 0."""
    from datasets.folds import nested_splits
    from datasets.joints import fill_missing
    from datasets.representations import build_representation
    from datasets.synthetic_gesture import GESTURE_CLASSES, generate_gestures

    items = generate_gestures(cfg.subjects, cfg.per_class, seed=0)
    seqs = [fill_missing(seq).joints[..., :2] for _, seq in items]  # (T, J, 2) each
    lengths = np.array([len(s) for s in seqs], np.int64)
    padded = np.zeros((len(seqs), lengths.max(), seqs[0].shape[1], 2), np.float32)  # (N,T,J,2)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    labels = np.array([GESTURE_CLASSES.index(it.label) for it, _ in items], np.int64)
    subjects = [it.subject for it, _ in items]
    x = {
        kind: build_representation(
            torch.from_numpy(padded), torch.from_numpy(lengths), kind, cfg.rep_size, cfg.rep_length
        )
        for kind in cfg.representations
    }
    outer = nested_splits(subjects, labels.tolist(), 3, 2, seed=0)[0]
    # torch tensors: numpy arrays come back read-only from Ray's object store
    splits = [
        (torch.from_numpy(i.train.copy()), torch.from_numpy(i.val.copy())) for i in outer.inner
    ]
    return {
        "x": x,
        "y": torch.from_numpy(labels),
        "splits": splits,
        "classes": len(GESTURE_CLASSES),
    }


def trial(config: dict, data: dict, bench: SearchBench) -> None:
    """Tune function trainable: train ``config`` on every inner split. Deterministic for a
    configuration (fixed seeds, one thread, fixed batch order).

    ``folds`` protocol (what ``distributed.tune`` does): the splits one after the other, E epochs
    each; after each split, report the running mean of the splits' best validation UAR
    (``folds_done`` is ASHA's time). ``epochs`` protocol: all splits side by side, report the mean
    UAR of the current epoch after every epoch (``epoch`` is ASHA's time). Every report carries its
    ``cost`` in trial-epochs (one epoch on every split) and whether the budget is ``full``.
    """
    from ray import tune

    from distributed.results.metrics import confusion, uar
    from models import build_model

    torch.set_num_threads(1)
    x, y = data["x"][config["representation"]], data["y"]
    n = len(data["splits"])

    def make(j):
        torch.manual_seed(1000 + j)
        model = build_model(
            "accm",
            num_classes=data["classes"],
            in_channels=x.shape[1],
            width=config["width"],
            se_reduction=bench.se_reduction,
        )
        return model, torch.optim.Adam(model.parameters(), lr=config["lr"])

    def epoch_score(j, epoch, model, opt) -> float:
        train, val = data["splits"][j]
        order = train[torch.from_numpy(np.random.default_rng([j, epoch]).permutation(len(train)))]
        model.train()
        for start in range(0, len(order), bench.batch_size):
            idx = order[start : start + bench.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(x[val]).argmax(1)
        return uar(confusion(y[val].numpy(), pred.numpy(), data["classes"]))

    if bench.protocol == "folds":
        bests = []
        for j in range(n):
            model, opt = make(j)
            bests.append(max(epoch_score(j, e, model, opt) for e in range(bench.epochs)))
            tune.report(
                {METRIC: float(np.mean(bests)), "folds_done": j + 1, "cost": bench.epochs / n,
                 "full": j + 1 == n, "wall": time.time()}
            )  # fmt: skip
        return
    states = [make(j) for j in range(n)]
    for epoch in range(bench.epochs):
        scores = [epoch_score(j, epoch, *states[j]) for j in range(n)]
        tune.report(
            {METRIC: float(np.mean(scores)), "epoch": epoch + 1, "cost": 1.0,
             "full": epoch + 1 == bench.epochs, "wall": time.time()}
        )  # fmt: skip


def _space(cfg: SearchBench, grid: bool) -> dict:
    from ray import tune

    make = tune.grid_search if grid else tune.choice
    return {
        "representation": make(list(cfg.representations)),
        "width": make(list(cfg.widths)),
        "lr": make(list(cfg.lrs)),
    }


def _key(config: dict) -> tuple:
    return (config["representation"], config["width"], config["lr"])


def run_search(cfg, data, scratch: Path, name: str, seed: int | None, target: float | None):
    """Grid (``seed`` None) or TPE + ASHA; returns (reports sorted by time, wall seconds)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    class ReachedTarget(tune.Stopper):
        """Stop everything once a full-budget trial is within TOLERANCE of the grid's best."""

        def __init__(self):
            self.hit = False

        def __call__(self, trial_id, result):
            if target is not None and result["full"] and result[METRIC] >= target:
                self.hit = True
            return False

        def stop_all(self):
            return self.hit

    grid = seed is None
    trainable = tune.with_resources(tune.with_parameters(trial, data=data, bench=cfg), {"cpu": 1})
    if grid:
        tune_config = tune.TuneConfig(
            metric=METRIC,
            mode="max",
            scheduler=FIFOScheduler(),
            max_concurrent_trials=cfg.concurrency,
        )
    else:
        from optuna.samplers import TPESampler

        sampler = TPESampler(seed=seed, n_startup_trials=cfg.startup_trials)
        searcher = ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=cfg.concurrency)
        tune_config = tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=cfg.tpe_samples,
            search_alg=searcher,
            scheduler=ASHAScheduler(
                time_attr="folds_done" if cfg.protocol == "folds" else "epoch",
                max_t=len(data["splits"]) if cfg.protocol == "folds" else cfg.epochs,
                grace_period=1,
                reduction_factor=2,
            ),
        )
    tuner = tune.Tuner(
        trainable,
        param_space=_space(cfg, grid),
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=name, storage_path=str(scratch / "tune"), stop=ReachedTarget(), verbose=0
        ),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - t0
    reports = []
    for r in results:
        if r.error is not None:
            raise RuntimeError(f"{name}: a trial failed: {r.error}")
        df = r.metrics_dataframe
        if df is None or df.empty:  # stopped (by the target stopper) before its first report
            continue
        for _, row in df.iterrows():
            reports.append(
                {
                    "wall": row["wall"],
                    "cost": float(row["cost"]),
                    "full": bool(row["full"]),
                    "score": row[METRIC],
                    "config": _key(r.config),
                    "trial": r.path,
                }
            )
    reports.sort(key=lambda rep: rep["wall"])
    return reports, wall


def crossing(reports: list[dict], target: float, full_only: bool = True):
    """(trial-epochs spent when a score first reaches ``target``, that report), or (None, None)."""
    spent = 0.0
    for rep in reports:
        spent += rep["cost"]
        if rep["score"] >= target and (rep["full"] or not full_only):
            return spent, rep
    return None, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer epochs, one TPE seed")
    parser.add_argument("--smoke", action="store_true", help="toy space and data (a test runs it)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--protocol",
        choices=["folds", "epochs"],
        default="folds",
        help="ASHA rungs: whole inner folds, as distributed.tune (default), or single epochs",
    )
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else QUICK if args.quick else FULL
    cfg = replace(cfg, protocol=args.protocol)
    mode = "(smoke)" if args.smoke else "(quick)" if args.quick else ""
    print(f"search benchmark {mode}: {cfg}")
    print(f"start: {_util.machine_load()}")
    with _util.scratch_dir(args.keep) as scratch:
        _util.use_private_ray_tmp(scratch)
        data = build_data(cfg)
        ray = _util.start_ray(cfg.concurrency)
        try:
            grid_reports, grid_wall = run_search(cfg, data, scratch, "grid", None, None)
            load_grid = _util.machine_load()
            final = {r["config"]: r["score"] for r in grid_reports if r["full"]}
            best = max(final.values())
            target = best - TOLERANCE + 1e-9
            tpe = []
            for seed in cfg.seeds:
                reports, wall = run_search(cfg, data, scratch, f"tpe{seed}", seed, target)
                tpe.append((seed, reports, wall, _util.machine_load()))
        finally:
            ray.shutdown()
    return report(cfg, grid_reports, grid_wall, load_grid, final, best, target, tpe)


def report(cfg, grid_reports, grid_wall, load_grid, final, best, target, tpe) -> int:
    """Print the grid, each TPE+ASHA run and the ratios."""
    grid_cost = sum(r["cost"] for r in grid_reports)
    if abs(grid_cost - cfg.grid_size * cfg.epochs) > 1e-6:
        raise RuntimeError(
            f"the grid reported {grid_cost} epochs, not {cfg.grid_size * cfg.epochs}"
        )
    print(
        f"\ngrid: {cfg.grid_size} points x {cfg.epochs} epochs = {grid_cost:.0f} trial-epochs, "
        f"{grid_wall:.0f} s ({load_grid})"
    )
    print_table(
        [(*k, f"{v:.3f}") for k, v in sorted(final.items(), key=lambda kv: -kv[1])],
        ("representation", "width", "lr", f"{METRIC} @ {cfg.epochs} epochs ({cfg.protocol})"),
    )
    good = sum(v >= target for v in final.values())
    n = len(final)
    random_cost = cfg.epochs * (n + 1) / (good + 1)  # draws without replacement until a hit
    print(
        f"grid best {best:.3f}; {good}/{n} points within {TOLERANCE} of it; random order "
        f"without early stopping would need {random_cost:.1f} trial-epochs on average "
        f"({random_cost / grid_cost:.0%} of the grid)"
    )

    rows, ratios, mismatch = [], [], 0.0
    for seed, reports, wall, load in tpe:
        spent, rep = crossing(reports, target)
        any_spent, _ = crossing(reports, target, full_only=False)
        trials = len({r["trial"] for r in reports})
        distinct = len({r["config"] for r in reports})
        full = [r for r in reports if r["full"]]
        for r in full:  # the same configuration must score the same in both searches
            mismatch = max(mismatch, abs(r["score"] - final[r["config"]]))
        ratio = spent / grid_cost if spent else float("nan")
        ratios.append(ratio if spent else float("inf"))
        rows.append(
            (
                seed,
                f"{spent:g}" if spent else f"not within {sum(r['cost'] for r in reports):g}",
                f"{ratio:.0%}" if spent else "-",
                f"{any_spent:g}" if any_spent else "-",
                f"{rep['score']:.3f} {rep['config']}" if rep else "-",
                f"{trials} / {distinct} / {len(full)}",
                f"{wall:.0f}",
                load,
            )
        )
    print(
        f"\nTPE + ASHA (OptunaSearch + ASHAScheduler on {cfg.protocol}, grace 1, factor 2), "
        f"stopped at the first full-budget score >= grid best - {TOLERANCE}"
    )
    print_table(
        rows,
        (
            "seed",
            "trial-epochs",
            "of grid",
            "(any report)",
            "score, config",
            "trials/configs/full",
            "wall s",
            "load",
        ),
    )
    print("(any report): trial-epochs until any report, also an ASHA-stopped trial's, reached it;")
    print("trials/configs/full: trials run, distinct configurations, trials run to the full budget")
    print(f"determinism check: max |TPE score - grid score| for the same config = {mismatch:.4f}")
    med = _util.median(ratios)
    print(
        f"\nsummary: TPE + ASHA needed a median {med:.0%} of the grid's compute to come within "
        f"{TOLERANCE} of its best (target <= 35%): {'met' if med <= 0.35 else 'NOT met'} "
        f"({_util.machine_load()})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
