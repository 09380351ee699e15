"""The nested-CV search behind ``distributed.tune``: Ray Tune + Optuna per outer fold.

For each outer fold: Optuna (TPE) proposes configurations; a trial trains one configuration on
every inner, subject-disjoint validation split of that outer fold in ONE TorchTrainer fit and
reports the running mean of the best validation metric after each split (ASHA stops bad trials
early on that). The best configuration is then retrained on the whole outer training fold and
scored on the outer test fold, which the search never reads.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from datasets import storage
from datasets.manifest import Manifest
from datasets.protocols import Protocol
from distributed.core.commands import JobFailed, UsageError
from distributed.core.config import TrainConfig
from distributed.search import events
from distributed.search.ledger import (
    TRIAL_ERROR,
    Ledger,
    LedgerCallback,
    TrialSeededSampler,
    asha_state,
    ledger_path,
    ledger_rows,
    pending_points,
    rebuild_study,
    replay_asha,
)
from distributed.search.space import SearchSpace
from distributed.training.checkpoint import TrainedOn
from distributed.training.launch import (
    FoldData,
    FoldSpec,
    Resources,
    export_model,
    fit_folds,
    prepare_datasets,
)

METRIC = "cv_metric"
TRIAL_RETRIES = 2  # a trial whose process or node died starts again from its last checkpoint
DRIVER_CPU = 0.01  # a trial's own driver only waits on its TorchTrainer


@dataclass(frozen=True)
class SearchPlan:
    """What one search runs: data, the fixed part of the config, the space and the budget."""

    shards: str
    manifest: Manifest
    protocol: Protocol
    protocol_key: str
    base: TrainConfig
    space: SearchSpace
    outers: list[int]
    samples: int
    root: str  # STORAGE/NAME
    resources: Resources
    concurrency: int
    resume: bool = False
    verbose: int = 0  # Tune's own console output (0: none; our lines come from search_events)
    mlflow: str | None = None  # an MLflow tracking URI: every trial becomes an MLflow run


def inner_specs(plan: SearchPlan, outer: int) -> list[FoldSpec]:
    return [
        FoldSpec(s.train, s.val, TrainedOn(outer, j, plan.protocol_key))
        for j, s in enumerate(plan.protocol.fold(outer).inner)
    ]


def outer_test_ids(plan: SearchPlan, outer: int) -> frozenset[str]:
    """The outer test fold: no trial may read these rows (checked when batches are built)."""
    return frozenset(plan.protocol.fold(outer).test)


def feedback_cap(samples: int) -> int:
    """Trials run at once by default: a quarter of the budget (at least 1), so that TPE proposes
    most points knowing how earlier ones did (with every trial at once it learns nothing)."""
    return max(1, -(-samples // 4))


def plan_concurrency(
    total_cpus: float,
    workers: int,
    cpus_per_worker: float,
    wanted: int | None,
    autoscaling: bool = False,
    *,
    total_gpus: float = 0.0,
    gpus_per_worker: float = 0.0,
    samples: int | None = None,
) -> int:
    """Trials that fit at once: by CPUs (keeping one for Ray Data's tasks: the 2-CPU hang) and,
    when trials use GPUs, by GPUs (fractions included: two trials of 0.5 GPU share one); capped
    by ``wanted`` (``--max-concurrent``) or else by :func:`feedback_cap` of ``samples``.

    On a cluster that autoscales (``autoscaling``), the resources up now say nothing about what
    will come: the cap alone decides, and trials wait for the autoscaler's nodes.
    """
    workers = max(workers, 1)
    cap = wanted or (feedback_cap(samples) if samples else None)
    per_trial = workers * cpus_per_worker + DRIVER_CPU
    fit = int((total_cpus - 1.0) // per_trial)
    what = f"a trial needs {per_trial:.2f} CPUs plus 1 for data loading"
    have = f"the cluster has {total_cpus:g} CPUs"
    if gpus_per_worker > 0:
        per_gpu = workers * gpus_per_worker
        by_gpu = int(total_gpus / per_gpu + 1e-9)
        if by_gpu < fit:
            fit = by_gpu
            what, have = f"a trial needs {per_gpu:g} GPUs", f"the cluster has {total_gpus:g}"
    if autoscaling:
        return cap or max(fit, 1)
    if fit < 1:
        raise UsageError(
            f"{what}, {have}; lower --workers-per-trial, --cpus-per-worker or --gpus-per-worker"
        )
    return min(fit, cap) if cap else fit


def trial_driver(
    config: dict,
    *,
    base: dict,
    outer: int,
    resources: Resources,
    train_storage: str,
    data: FoldData,
) -> None:
    """Tune function trainable: one configuration on every inner split, in one fit (in this
    trial's process for one-worker trials, else one TorchTrainer fit).

    ``data`` holds the inner folds' datasets, read once by the driver for all trials."""
    import traceback

    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    try:
        fit_folds(
            TrainConfig.from_dict(base).override(where="trial", **config),
            data,
            resources=resources,
            storage_path=train_storage,
            name=f"outer{outer}-{trial_id}",
            write_model=False,
            tune_report=True,
        )
    except Exception as err:  # noqa: BLE001 -- the configuration's own failure: not retried
        # Tune retries a trial that raises (TRIAL_RETRIES); that is for a process or node that
        # died, not for an error this configuration would raise again. It ends the trial as a
        # last result instead (its traceback in this worker's log): see Ledger.record_result.
        traceback.print_exc()
        tune.report({METRIC: math.nan, TRIAL_ERROR: f"{type(err).__name__}: {err}"})


def optuna_storage(root: str, outer: int) -> dict:
    """The Optuna study's storage: a journal file next to the experiment (every trial and its
    value, readable by Optuna and optuna-dashboard); in memory on remote storage, where the
    ledger alone keeps the search."""
    local = storage.local_path(root)
    if local is None:
        from optuna.storages import InMemoryStorage

        return {"storage": InMemoryStorage(), "study_name": f"outer{outer}"}
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    os.makedirs(local, exist_ok=True)
    backend = JournalFileBackend(os.path.join(local, f"optuna-outer{outer}.journal"))
    return {"storage": JournalStorage(backend), "study_name": f"outer{outer}"}


def search_outer_fold(plan: SearchPlan, outer: int) -> Ledger:
    """Run (or resume) the search of one outer fold; returns its ledger, every trial finished.

    A resume never restores Tune's own state (it can lag behind a killed driver): a new Tuner
    starts from the ledger (see ``distributed.search.ledger``) and runs only the missing trials."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    root = plan.root
    n_inner = len(plan.protocol.fold(outer).inner)
    search = {"space": plan.space.space, "start": plan.space.start, "base": plan.base.to_dict()}
    ledger = Ledger.open(root, outer, search, plan.resume)
    created = ledger.previous  # every trial the last attempt created, finished or not
    finished = ledger.finished()
    if len(finished) > plan.samples:
        raise UsageError(
            f"{ledger.path}: {len(finished)} trials already finished, more than --samples "
            f"{plan.samples}; resume with --samples {len(finished)} or more"
        )
    to_run = plan.samples - len(finished)
    if to_run == 0 and storage.exists(storage.join(root, f"outer{outer}", "final.json")):
        return ledger  # this outer fold is done: nothing is rebuilt or rewritten
    if finished:
        events.console.emit(
            f"outer fold {outer}: resuming from {ledger.path}: {len(finished)} trial(s) "
            f"finished, {to_run} to run"
        )
    tune_space = plan.space.tune_space()
    distributions = OptunaSearch.convert_search_space(tune_space)
    study = optuna_storage(root, outer)
    # also when nothing is left to run: a kill after the last trial ended can leave it running
    rebuild_study(study["storage"], study["study_name"], ledger, distributions)
    asha = ASHAScheduler(time_attr="folds_done", max_t=n_inner, grace_period=1, reduction_factor=2)
    replay_asha(asha, ledger, n_inner)
    ledger.scheduler = asha_state(asha, {})
    ledger.save()
    if to_run == 0:
        return ledger
    points = pending_points(created, plan.space.start, distributions)[:to_run]
    searcher = OptunaSearch(
        points_to_evaluate=points or None,
        sampler=TrialSeededSampler(plan.base.seed + outer),
        **study,
    )
    data = prepare_datasets(plan.shards, inner_specs(plan, outer), outer_test_ids(plan, outer))
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_driver,
            base=plan.base.to_dict(),
            outer=outer,
            resources=plan.resources,
            train_storage=storage.join(root, "train"),
            data=data,
        ),
        # a one-worker trial trains in its own process: it holds the worker's CPUs (and GPUs)
        plan.resources.per_worker() if plan.resources.local else {"CPU": DRIVER_CPU},
    )
    name = f"outer{outer}" if ledger.attempt == 0 else f"outer{outer}-resume{ledger.attempt}"
    ledger_events = LedgerCallback(ledger, asha, n_inner)  # first: it numbers the trials
    tuner = tune.Tuner(
        trainable,
        param_space=tune_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=to_run,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=plan.concurrency),
            scheduler=asha,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=root,
            verbose=plan.verbose,
            # in-process trials report their checkpoints to Tune: the newest two are kept
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
            callbacks=[ledger_events, *events.callbacks(plan, outer, ledger_events.number)],
        ),
    )
    tuner.fit()
    return ledger


def best_of(rows: list[dict]) -> dict | None:
    """The trial with the best inner-CV score among those that finished every inner fold with
    a score (None: no trial did)."""
    complete = [r for r in rows if r["complete"] and np.isfinite(r[METRIC])]
    return max(complete, key=lambda r: r[METRIC]) if complete else None


def no_trial_finished(plan: SearchPlan, outer: int, pos: str, rows: list[dict]) -> JobFailed:
    """Every trial of an outer fold failed (or none kept a score): trials.csv is written with
    every trial so far, each distinct reason is printed once, and the error to end with."""
    from distributed.results.report import write_trials

    path = write_trials(plan.root, rows)
    reasons = Counter(
        r["error"] or ("a score that is not a number" if r["complete"] else "stopped early")
        for r in rows
        if r["outer"] == outer
    )
    for reason, n in reasons.most_common():
        events.trials_failed(pos, n, reason)
    return JobFailed(
        f"no trial of outer fold {outer} finished every inner fold with a score "
        f"({sum(reasons.values())} ran; reasons above); every trial: {path}"
    )


def final_fold(plan: SearchPlan, cfg: TrainConfig, outer: int, attempt: int = 0) -> dict:
    """Retrain the chosen configuration on the outer training fold, score the outer test fold.

    ``final.json`` marks it done; a retrain killed before that is redone from scratch (a fresh
    Ray Train run per ``attempt``: same seed, same model), never continued from a checkpoint."""
    from distributed.inference.evaluation import predict_fold, summarise
    from distributed.training.checkpoint import load_model

    root = plan.root
    done_path = storage.join(root, f"outer{outer}", "final.json")
    if plan.resume and storage.exists(done_path):
        return json.loads(storage.read_bytes(done_path))
    fold = plan.protocol.fold(outer)
    spec = FoldSpec(fold.train, None, TrainedOn(outer, None, plan.protocol_key))
    data = prepare_datasets(plan.shards, [spec])
    fit = fit_folds(
        cfg,
        data,
        resources=plan.resources,
        storage_path=storage.join(root, "train"),
        name=f"outer{outer}-final" + (f"-resume{attempt}" if attempt else ""),
    )
    model_file = export_model(fit, storage.join(root, "models", f"outer{outer}.pt"))
    mf = load_model(storage.read_bytes(model_file), name=model_file)
    ids, y, probs = predict_fold(mf, plan.shards, fold.test)
    summary = summarise(y, probs.argmax(1), mf.classes)
    # the per-item predictions (results/predictions.csv; what distributed.compare reads)
    summary.update(outer=outer, model=model_file, epochs=cfg.epochs, ids=ids, y=y.tolist(),
                   probs=np.round(probs, 6).tolist(), head=cfg.head,
                   config_hash=config_hash(cfg))  # fmt: skip
    storage.atomic_write_bytes(done_path, json.dumps(summary).encode())
    return summary


def progress(root: str, outers: list[int], samples: int) -> str:
    """What an interrupted search kept, from its ledgers and final.json files: ``outer fold 0
    done; outer fold 1: 2 of 3 trials finished; outer fold 2 not started``."""
    parts = []
    for outer in outers:
        if storage.exists(storage.join(root, f"outer{outer}", "final.json")):
            parts.append(f"outer fold {outer} done")
            continue
        path = ledger_path(root, outer)
        if not storage.exists(path):
            parts.append(f"outer fold {outer} not started")
            continue
        try:
            trials = json.loads(storage.read_bytes(path))["trials"]
        except (ValueError, KeyError, OSError):
            parts.append(f"outer fold {outer}: {path} unreadable")
            continue
        n = sum(1 for t in trials if t.get("end"))
        retrain = "; its retrain not finished" if n >= samples else ""
        parts.append(f"outer fold {outer}: {n} of {samples} trials finished{retrain}")
    return "; ".join(parts)


def config_hash(cfg: TrainConfig) -> str:
    """A short digest of a whole configuration: the same hash, the same training."""
    import hashlib

    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_search(plan: SearchPlan) -> str:
    """Every outer fold of the plan, then the results folder; returns report.md's text."""
    from distributed.core.runtime import git_commit
    from distributed.results.report import write_results

    t0 = time.time()
    all_rows, finals = [], []
    n_inner0 = len(plan.protocol.fold(plan.outers[0]).inner) if plan.outers else 0
    events.start(len(plan.outers), plan.samples, n_inner0)
    for i, outer in enumerate(plan.outers):
        n_inner = len(plan.protocol.fold(outer).inner)
        pos = f"{i + 1}/{len(plan.outers)}"
        resumed = plan.resume and storage.exists(storage.join(plan.root, f"outer{outer}"))
        events.outer_started(pos, outer, plan.samples, resumed)
        ledger = search_outer_fold(plan, outer)
        rows = ledger_rows(ledger, outer, plan.space.space, n_inner)
        best = best_of(rows)
        if best is None:
            raise no_trial_finished(plan, outer, pos, all_rows + rows)
        params = {k: best[k] for k in plan.space.space}
        epochs = (
            int(round(np.mean(best["best_epochs"]))) + 1
            if best["best_epochs"]
            else plan.base.epochs
        )
        cfg = plan.base.override(where="best trial", **params, epochs=max(1, epochs))
        if plan.resume and storage.exists(storage.join(plan.root, f"outer{outer}", "final.json")):
            events.console.emit(f"outer fold {pos}: retrained before (final.json kept)")
        else:
            events.final_started(pos, cfg.epochs, params)
        summary = final_fold(plan, cfg, outer, ledger.attempt)
        summary["params"], summary["trial"] = params, best["trial"]
        summary["cv_metric"] = best[METRIC]
        all_rows += rows
        finals.append(summary)
        events.outer_finished(pos, summary, plan.base.select_metric.upper(), best[METRIC])
    return write_results(
        plan.root,
        shards=plan.shards,
        samples=plan.samples,
        manifest=plan.manifest,
        protocol=plan.protocol,
        base=plan.base,
        space=plan.space,
        rows=all_rows,
        finals=finals,
        seconds=time.time() - t0,
        commit=git_commit(),
        workers=max(plan.resources.workers, 1),
        gpus=plan.resources.gpus,
    )


__all__ = ["SearchPlan", "plan_concurrency", "run_search"]
