"""The main job: nested cross-validated hyperparameter search with Ray Tune + Optuna.

    python -m distributed.tune {facial,gesture} [--shards DIR] [--folds K] [--samples N]
        [--workers-per-trial W] [--gpus-per-worker G] [--max-concurrent M] [--space FILE]
        [--storage PATH_OR_URI] [--name NAME] [--resume] [--smoke] [--address ADDR]

For each outer fold: Optuna (TPE) proposes configurations; a trial trains one configuration on
every inner, subject-disjoint validation split of that outer fold in ONE TorchTrainer fit and
reports the running mean of the best validation metric after each split (ASHA stops bad trials
early on that). The best configuration is then retrained on the whole outer training fold and
scored on the outer test fold, which the search never reads. The result is the mean ± std of WAR
and UAR over outer folds. Without ``--shards`` a synthetic demo set is generated and preprocessed
through the real pipeline first. ``--resume`` continues an interrupted run of the same name.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from dataclasses import replace

import numpy as np
from ray.tune import Callback

from datasets import shards, storage
from distributed.common import REPO_ROOT, cluster_cpus, git_commit, init_ray
from distributed.config import SMOKE, TrainConfig, default_config
from distributed.search_space import SearchSpace, load_space
from distributed.train import FoldSpec, export_model, fit_folds, prepare_datasets

METRIC = "cv_metric"
DRIVER_CPU = 0.01  # a trial's own driver only waits on its TorchTrainer


def inner_specs(manifest: dict, outer: int) -> list[FoldSpec]:
    fold = manifest["folds"]["outer"][outer]
    return [
        FoldSpec(tuple(s["train"]), tuple(s["val"]), {"outer": outer, "inner": j})
        for j, s in enumerate(fold["inner"])
    ]


def outer_test_ids(manifest: dict, outer: int) -> frozenset[str]:
    """The outer test fold: no trial may read these rows (checked when batches are built)."""
    return frozenset(manifest["folds"]["outer"][outer]["test"])


def plan_concurrency(
    total_cpus: float,
    workers: int,
    cpus_per_worker: float,
    wanted: int | None,
    autoscaling: bool = False,
) -> int:
    """Trials that fit at once, keeping one CPU for Ray Data tasks (avoids the 2-CPU hang).

    On a cluster that autoscales from zero (``autoscaling``), the CPUs up now say nothing about
    what will come: ``wanted`` (or 1) trials are started and wait for the autoscaler's nodes.
    """
    per_trial = workers * cpus_per_worker + DRIVER_CPU
    fit = int((total_cpus - 1.0) // per_trial)
    if fit < 1:
        if autoscaling:
            return wanted or 1
        raise SystemExit(
            f"error: a trial needs {per_trial:.2f} CPUs plus 1 for data loading, the cluster has "
            f"{total_cpus:g}; lower --workers-per-trial or --cpus-per-worker"
        )
    return min(fit, wanted) if wanted else fit


def trial_driver(
    config: dict,
    *,
    base: dict,
    shards_root: str,
    outer: int,
    workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    train_storage: str,
    prepared: tuple,
) -> None:
    """Tune function trainable: one configuration on every inner split, one TorchTrainer fit.

    ``prepared`` holds the inner folds' datasets, read once by the driver for all trials."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = TrainConfig(**{**base, **config})
    manifest = shards.read_manifest(shards_root)
    trial_id = tune.get_context().get_trial_id()
    fit_folds(
        cfg,
        shards_root,
        inner_specs(manifest, outer),
        workers=workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        storage_path=train_storage,
        name=f"outer{outer}-{trial_id}",
        forbidden_ids=outer_test_ids(manifest, outer),
        write_model=False,
        callbacks=[TuneReportCallback()],
        prepared=prepared,
    )


def optuna_storage(root: str, outer: int) -> dict:
    """A journal file next to the experiment holds the Optuna study, so the study (every trial
    and its value) survives a killed driver and can be inspected with Optuna; on remote storage
    the searcher state saved by Tune is used alone."""
    local = storage.local_path(root)
    if local is None:
        return {}
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    os.makedirs(local, exist_ok=True)
    backend = JournalFileBackend(os.path.join(local, f"optuna-outer{outer}.journal"))
    return {"storage": JournalStorage(backend), "study_name": f"outer{outer}"}


class SchedulerSaver(Callback):
    """Tune callback that persists the trial scheduler's state after every result (Tune restores
    the searcher on resume, not the scheduler)."""

    def __init__(self, scheduler, path: str):
        self.scheduler, self.path = scheduler, path

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._save()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._save()

    def _save(self) -> None:
        storage.atomic_write_bytes(self.path, pickle.dumps(self.scheduler.__dict__))


def search_outer_fold(
    args,
    manifest: dict,
    base: TrainConfig,
    space: SearchSpace,
    outer: int,
    root: str,
    concurrency: int,
):
    """Run (or resume) the search of one outer fold; returns Tune's ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    n_inner = len(manifest["folds"]["outer"][outer]["inner"])
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_driver,
            base=base.to_dict(),
            shards_root=args.shards,
            outer=outer,
            workers=args.workers_per_trial,
            use_gpu=args.gpus_per_worker > 0,
            cpus_per_worker=args.cpus_per_worker,
            train_storage=storage.join(root, "train"),
            prepared=prepare_datasets(
                args.shards,
                base.kind,
                inner_specs(manifest, outer),
                outer_test_ids(manifest, outer),
            ),
        ),
        {"CPU": DRIVER_CPU},
    )
    exp_path = storage.join(root, f"outer{outer}")
    asha_path = storage.join(root, f"asha-outer{outer}.pkl")
    if args.resume and tune.Tuner.can_restore(exp_path):
        print(f"outer fold {outer}: resuming the search in {exp_path}")
        tuner = tune.Tuner.restore(
            exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        # Tune restores the searcher but not the scheduler: put ASHA's rungs back, or trials
        # finished before the interruption would no longer count when cutting new ones.
        if storage.exists(asha_path):
            scheduler = tuner._local_tuner._tune_config.scheduler
            saved = pickle.loads(storage.read_bytes(asha_path))
            # metric and mode are set again by Tune when the restored run starts
            for key in ("_metric", "_mode", "_metric_op"):
                saved.pop(key, None)
            scheduler.__dict__.update(saved)
    else:
        searcher = OptunaSearch(
            points_to_evaluate=space.start or None,
            seed=base.seed + outer,
            **optuna_storage(root, outer),
        )
        asha = ASHAScheduler(
            time_attr="folds_done", max_t=n_inner, grace_period=1, reduction_factor=2
        )
        tuner = tune.Tuner(
            trainable,
            param_space=space.tune_space(),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                num_samples=args.samples,
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                scheduler=asha,
            ),
            run_config=tune.RunConfig(
                name=f"outer{outer}",
                storage_path=root,
                verbose=1 if args.quiet else 2,
                callbacks=[SchedulerSaver(asha, asha_path)],
            ),
        )
    return tuner.fit()


def trial_rows(grid, outer: int, n_inner: int, space: SearchSpace) -> list[dict]:
    """One row per trial: parameters, final running mean, folds finished, best epochs."""
    rows = []
    for result in grid:
        m = result.metrics or {}
        df = result.metrics_dataframe
        epochs = []
        if df is not None and "best_epoch" in df and "folds_done" in df:
            ends = df[df["folds_done"].diff().fillna(df["folds_done"]) > 0]
            epochs = [int(e) for e in ends["best_epoch"].tolist()]
        rows.append(
            {
                "outer": outer,
                "trial_id": m.get(
                    "trial_id", result.path.rsplit("_", 2)[-2] if result.path else ""
                ),
                **{k: result.config.get(k) for k in space.space},
                METRIC: m.get(METRIC, float("nan")),
                "folds_done": int(m.get("folds_done", 0)),
                "complete": int(m.get("folds_done", 0)) == n_inner and result.error is None,
                "best_epochs": epochs,
                "error": str(result.error)[:200] if result.error else "",
            }
        )
    return rows


def best_of(rows: list[dict]) -> dict:
    complete = [r for r in rows if r["complete"] and np.isfinite(r[METRIC])]
    if not complete:
        raise RuntimeError("no trial finished every inner fold; see trials.csv for the errors")
    return max(complete, key=lambda r: r[METRIC])


def final_fold(args, manifest, cfg: TrainConfig, outer: int, root: str) -> dict:
    """Retrain the chosen configuration on the outer training fold, score the outer test fold."""
    from distributed.evaluate import predict_fold, summarise
    from distributed.steps import load_model_checkpoint

    done_path = storage.join(root, f"outer{outer}", "final.json")
    if args.resume and storage.exists(done_path):
        return json.loads(storage.read_bytes(done_path))
    fold = manifest["folds"]["outer"][outer]
    spec = FoldSpec(tuple(fold["train"]), None, {"outer": outer, "inner": None})
    name = f"outer{outer}-final"
    result = fit_folds(
        cfg,
        args.shards,
        [spec],
        workers=args.workers_per_trial,
        use_gpu=args.gpus_per_worker > 0,
        cpus_per_worker=args.cpus_per_worker,
        storage_path=storage.join(root, "train"),
        name=name,
    )
    model_file = export_model(result, storage.join(root, "models", f"outer{outer}.pt"))
    model, mcfg, blob = load_model_checkpoint(storage.read_bytes(model_file))
    ids, y, probs = predict_fold(model, mcfg, args.shards, fold["test"])
    summary = summarise(y, probs.argmax(1), blob["class_names"])
    summary.update(outer=outer, model=model_file, epochs=cfg.epochs, ids=ids)
    storage.atomic_write_bytes(done_path, json.dumps(summary).encode())
    return summary


def prepare_demo_shards(kind: str, smoke: bool) -> str:
    """Generate (once) the synthetic demo set and preprocess it with the real pipeline."""
    from datasets.synthetic import write_facial_set
    from datasets.synthetic_gesture import write_gesture_set
    from distributed import preprocess

    # Faces: many subjects with few videos each, so that every inner training split holds four
    # faces (from two, nothing generalises to an unseen face). The names carry the recipe, so a
    # cache written by another version is not reused.
    subjects, per_class = (12, 2) if kind == "facial" else (6, 4)
    base = REPO_ROOT / "demo_data"
    raw = base / "raw" / f"{kind}-{subjects}x{per_class}"
    if not raw.exists() or not any(raw.rglob("*.*")):
        writer = write_facial_set if kind == "facial" else write_gesture_set
        writer(raw, n_subjects=subjects, per_class=per_class, seed=0)
    name = f"{raw.name}-s{48 if smoke else 112}" if kind == "facial" else raw.name
    out = base / "shards" / name
    if not (out / shards.MANIFEST).exists():
        argv = [
            kind,
            "--source",
            str(raw),
            "--layout",
            "folders",
            "--out",
            str(out),
            "--folds",
            "3",
            "--inner-folds",
            "2",
        ]
        if kind == "facial":
            argv += ["--size", "48" if smoke else "112"]
        code = preprocess.main(argv)
        if code != 0:
            raise SystemExit(f"error: preprocessing the demo set failed (exit {code})")
    return str(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distributed.tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=["facial", "gesture"])
    p.add_argument("--shards", help="shard folder (default: the synthetic demo set)")
    p.add_argument("--folds", type=int, default=None, help="outer folds to run (default: all)")
    p.add_argument("--samples", type=int, default=None, help="trials per outer fold")
    p.add_argument("--workers-per-trial", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--gpus-per-worker", type=float, default=0)
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="epochs per fold (default: config)")
    p.add_argument("--space", help="YAML/JSON search-space override file")
    p.add_argument("--storage", default="runs", help="results and checkpoints (path or URI)")
    p.add_argument("--name", default=None, help="experiment name (default: KIND or KIND-smoke)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--smoke", action="store_true", help="tiny models, few trials, 2 outer folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="less Tune console output")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray instance")
    return p


def main(argv: list[str] | None = None) -> int:
    from distributed.report import write_results

    args = build_parser().parse_args(argv)
    t0 = time.time()
    if not args.shards:
        args.shards = prepare_demo_shards(args.kind, args.smoke)
    manifest = shards.read_manifest(args.shards)
    if manifest["kind"] != args.kind:
        raise SystemExit(f"error: {args.shards} holds {manifest['kind']} shards, not {args.kind}")
    n_outer = len(manifest["folds"]["outer"])
    outers = list(range(min(args.folds or (2 if args.smoke else n_outer), n_outer)))
    args.samples = args.samples or (3 if args.smoke else 20)
    overrides = dict(SMOKE[args.kind]) if args.smoke else {}
    space = load_space(args.kind, args.space, smoke=args.smoke)
    overrides.update(space.fixed, seed=args.seed)
    if args.epochs:
        overrides["epochs"] = args.epochs
    base = default_config(args.kind, **overrides)
    name = args.name or (args.kind + ("-smoke" if args.smoke else ""))
    storage_root = args.storage if storage.is_uri(args.storage) else os.path.abspath(args.storage)
    root = storage.join(storage_root, name)
    if not args.resume and storage.exists(storage.join(root, "outer0")):
        raise SystemExit(f"error: {root} exists; pass --resume to continue it or a new --name")
    if not args.resume:  # on --resume the original command's settings are the ones recorded
        storage.makedirs(root)

    init_ray(args.address, args.num_cpus)
    if args.cpus_per_worker is None:
        args.cpus_per_worker = 1.0 if cluster_cpus() >= 8 else 0.5
    concurrency = plan_concurrency(
        cluster_cpus(),
        args.workers_per_trial,
        args.cpus_per_worker,
        args.max_concurrent,
        autoscaling=bool(args.address or os.environ.get("RAY_ADDRESS")),
    )
    print(
        f"nested CV on {args.shards}: outer folds {outers}, {args.samples} trials each, "
        f"{concurrency} at once, {args.workers_per_trial} worker(s) per trial"
    )

    all_rows, finals = [], []
    for outer in outers:
        n_inner = len(manifest["folds"]["outer"][outer]["inner"])
        grid = search_outer_fold(args, manifest, base, space, outer, root, concurrency)
        rows = trial_rows(grid, outer, n_inner, space)
        best = best_of(rows)
        params = {k: best[k] for k in space.space}
        epochs = (
            int(round(np.mean(best["best_epochs"]))) + 1 if best["best_epochs"] else base.epochs
        )
        cfg = replace(base, **params, epochs=max(1, epochs))
        summary = final_fold(args, manifest, cfg, outer, root)
        summary["params"], summary["trial_id"] = params, best["trial_id"]
        summary["cv_metric"] = best[METRIC]
        all_rows += rows
        finals.append(summary)
        print(
            f"outer fold {outer}: WAR {summary['war']:.3f} UAR {summary['uar']:.3f} "
            f"(best inner {base.select_metric.upper()} {best[METRIC]:.3f}, params {params})"
        )

    report = write_results(
        root,
        args=args,
        manifest=manifest,
        base=base,
        space=space,
        rows=all_rows,
        finals=finals,
        seconds=time.time() - t0,
        commit=git_commit(),
    )
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
