"""The main job: nested cross-validated hyperparameter search with Ray Tune + Optuna.

For each outer fold: Optuna (TPE) proposes configurations; a trial trains one configuration on
every inner, subject-disjoint validation split of that outer fold in ONE TorchTrainer fit and
reports the running mean of the best validation metric after each split (ASHA stops bad trials
early on that). The best configuration is then retrained on the whole outer training fold and
scored on the outer test fold, which the search never reads. The result is the mean ± std of WAR
and UAR over outer folds. Without ``--shards`` a synthetic demo set is generated and preprocessed
through the real pipeline first. ``--resume`` continues an interrupted run of the same name.
The search itself is ``distributed.search.driver``; this module only turns a command line into a
plan.

The console shows a header, one line per trial event and outer fold, the result and the path of
``report.md``; Ray's, Tune's and the workers' output go to ``STORAGE/NAME/logs/`` (``--verbose``
shows them). A trial with one worker trains in the trial's own process, reporting to Tune
(``--worker-group`` starts a Ray Train worker group instead); with ``--workers-per-trial W`` each
trial is a DDP worker group of W, and the config's ``batch_size`` is the batch of one step over
all W workers (each takes batch_size // W rows; the learning rate is used as configured).
``--gpus-per-worker`` may be a fraction (0.5: two trials share a GPU); concurrency is planned from
GPUs when trials use them, and is at most a quarter of ``--samples`` unless ``--max-concurrent``
says otherwise, so that TPE learns from finished trials.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass

from branches import BRANCH_HELP, branch_arg, get_branch
from datasets import storage
from datasets.manifest import read_manifest, read_protocol
from distributed.core import capacity, commands, console
from distributed.core.config import default_config, load_config_file
from distributed.search import run_record


@dataclass(frozen=True)
class TuneArgs:
    """The parsed command line of ``distributed.tune``."""

    branch: str
    shards: str | None = None
    folds: int | None = None
    samples: int | None = None
    workers_per_trial: int = 1
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0
    max_concurrent: int | None = None
    protocol: str | None = None
    epochs: int | None = None
    config: str | None = None
    space: str | None = None
    storage: str = "runs"
    name: str | None = None
    resume: bool = False
    smoke: bool = False
    seed: int = 0
    repeats: int = 1
    quiet: bool = False
    verbose: bool = False
    worker_group: bool = False
    mlflow: str | None = None
    address: str | None = None
    num_cpus: float | None = None


def tune(args: TuneArgs, started: dict | None = None) -> str:
    """Plan and run the search the command line asks for; returns report.md's text.
    ``started`` (when given) receives the run's root, outer folds and samples once the run is
    recorded (what an interrupt's line reports and ``--resume`` continues)."""
    from distributed.search.space import load_space, with_first_point

    branch = get_branch(args.branch)
    overrides = dict(branch.smoke) if args.smoke else {}
    preset = load_config_file(args.config, args.branch)
    overrides.update(preset.overrides)
    default_config(args.branch, args.config or "config", **overrides)  # values, naming the file
    # The whole space file is checked before anything else starts.
    space = load_space(args.branch, args.space, smoke=args.smoke, base_overrides=overrides)
    if preset.overrides:  # a preset is the fixed part of the search and its first point
        space = with_first_point(space, default_config(args.branch, **overrides))
    overrides.update(space.fixed, seed=args.seed)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    base = default_config(args.branch, **overrides)
    name = args.name or (args.branch + ("-smoke" if args.smoke else ""))
    storage_root = args.storage if storage.is_uri(args.storage) else os.path.abspath(args.storage)
    root = storage.join(storage_root, name)
    if not args.resume and any(
        storage.exists(storage.join(root, d)) for d in ("outer0", "repeat0")
    ):
        raise commands.UsageError(f"{root} exists; pass --resume to continue it or a new --name")
    if args.resume:
        run_record.require_run(root)
    storage.ensure_writable_dir(root, "--storage folder")
    if args.mlflow:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise commands.UsageError(
                "--mlflow needs MLflow: pip install mlflow-skinny (or .[mlflow])"
            ) from None
    if args.mlflow and args.mlflow.startswith("file:"):
        # MLflow 3 keeps its file store (what `mlflow ui --backend-store-uri file:...` reads) in
        # maintenance mode and refuses it unless this is set; a file: URI asks for it plainly.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    log_dir, note = console.log_dir_of(root, name)
    with console.capture(log_dir, "tune", verbose=args.verbose) as con:
        if con.log_path:
            con.emit(f"log: {con.log_path}{note} (Ray, Tune, workers; --verbose shows them here)")
        lock = run_record.acquire(root)  # one driver per run; released on errors too
        try:
            return _tune(args, branch, base, space, preset, name, root, started)
        finally:
            run_record.release(lock)


def _tune(
    args: TuneArgs, branch, base, space, preset, name: str, root: str, started: dict | None
) -> str:
    from distributed.core.runtime import cluster_cpus, cluster_gpus, init_ray, node_gpus
    from distributed.search.driver import SearchPlan, plan_concurrency, run_search
    from distributed.training.launch import Resources, trial_placement

    if args.shards:
        shards_root = args.shards
    else:
        from distributed.preprocessing.demo import demo_shards

        console.emit("data: the synthetic demo set (generated and preprocessed on first use)")
        shards_root = demo_shards(args.branch, args.smoke)
    manifest = read_manifest(shards_root)
    if manifest.kind != args.branch:
        raise commands.UsageError(f"{shards_root} holds {manifest.kind} shards, not {args.branch}")
    key, protocol = read_protocol(shards_root, manifest, args.protocol or preset.protocol)
    n_outer = len(protocol.outer)
    folds = args.folds if args.folds is not None else (2 if args.smoke else n_outer)
    outers = list(range(min(folds, n_outer)))
    samples = args.samples if args.samples is not None else (3 if args.smoke else 20)
    fingerprint = run_record.fingerprint(
        manifest=manifest, shards=shards_root, protocol_key=key, protocol=protocol, base=base,
        space=space,
    )  # fmt: skip
    if args.repeats > 1:
        fingerprint["repeats"] = args.repeats
    # what the run depends on: a --resume with any other input is refused
    run_record.check(root, fingerprint, args.resume)
    if started is not None:
        started.update(root=root, outers=outers, samples=samples, repeats=args.repeats)

    init_ray(args.address, args.num_cpus)
    cpus_per_worker = args.cpus_per_worker
    if cpus_per_worker is None:
        cpus_per_worker = 1.0 if cluster_cpus() >= 8 else 0.5
    autoscaling = bool(args.address or os.environ.get("RAY_ADDRESS"))
    gpus = args.gpus_per_worker
    request = capacity.Request(
        "a trial",
        args.workers_per_trial,
        cpus_per_worker,
        gpus,
        trial_placement(args.workers_per_trial, gpus, node_gpus(), autoscaling)[0],
    )
    _refuse_impossible(request, autoscaling)
    concurrency = plan_concurrency(
        cluster_cpus(),
        args.workers_per_trial,
        cpus_per_worker,
        args.max_concurrent,
        autoscaling=autoscaling,
        total_gpus=cluster_gpus(),
        gpus_per_worker=gpus,
        samples=samples,
    )
    local = args.workers_per_trial == 1 and not args.worker_group
    device = f"{gpus:g} GPU" if gpus else "CPU"
    how = (
        f"in each trial's own process ({device})"
        if local
        else f"{args.workers_per_trial} Ray Train workers each ({device} per worker)"
    )
    placement, where = trial_placement(args.workers_per_trial, gpus, node_gpus(), autoscaling)
    for line in (
        f"nested CV: {branch.name}, model {base.model.name}, shards {shards_root} "
        f"({manifest.counts.written} items, {len(manifest.classes)} classes)",
        f"protocol: {key} ({n_outer} outer folds; running {len(outers)}: {outers}; "
        f"{len(protocol.fold(outers[0]).inner)} inner splits each)",
        f"search: {samples} trials per outer fold, {concurrency} at once, {how}; "
        f"space: {', '.join(space.space)}",
        f"batch: {base.batch_size} per step in all"
        + ("" if local else f", {base.batch_size // args.workers_per_trial} per worker")
        + (f"; {where}" if where else ""),
        f"results: {storage.join(root, 'results')} (trials: {storage.join(root, 'outer*')})",
    ):
        console.emit(line)
    plan = SearchPlan(
        shards=shards_root,
        manifest=manifest,
        protocol=protocol,
        protocol_key=key,
        base=base,
        space=space,
        outers=outers,
        samples=samples,
        root=root,
        concurrency=concurrency,
        resume=args.resume,
        resources=Resources(
            0 if local else args.workers_per_trial, gpus, cpus_per_worker, placement
        ),
        verbose=(1 if args.quiet else 2) if args.verbose else 0,
        mlflow=args.mlflow,
    )
    import ray

    with capacity.Watch(
        request, lambda: ray.util.placement_group_table().values(), ray.available_resources,
        console.emit,
    ):  # fmt: skip
        if args.repeats == 1:
            text = run_search(plan)
        else:
            from distributed.search.repeats import run_repeats

            text = run_repeats(plan, args.repeats, lambda p: run_record.fingerprint(
                manifest=manifest, shards=shards_root, protocol_key=p.protocol_key,
                protocol=p.protocol, base=p.base, space=space))  # fmt: skip
    result = next((ln.replace("**", "") for ln in text.splitlines() if ln.startswith("**WAR")), "")
    console.emit(f"result: {result}")
    console.emit(f"report: {storage.join(root, 'results', 'report.md')}")
    return text


def _refuse_impossible(request, autoscaling: bool) -> None:
    """One line and exit 2 for a trial no node of a fixed cluster, or no node type of an
    autoscaling one (its config on the head node), can hold: Ray would queue it for ever."""
    if autoscaling:
        types = capacity.node_types()
        why = capacity.impossible_on_types(request, types) if types else None
    else:
        import ray

        why = capacity.impossible(request, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    if why:
        raise commands.UsageError(why)


def build_parser() -> argparse.ArgumentParser:
    p = commands.Parser(
        prog="python -m distributed.tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("branch", type=branch_arg, metavar="BRANCH", help=BRANCH_HELP)
    p.add_argument("--shards", help="shard folder (default: the synthetic demo set)")
    p.add_argument("--protocol", help="stored protocol (default: the shards' default)")
    p.add_argument(
        "--folds", type=commands.count, default=None, help="outer folds to run (default: all)"
    )
    p.add_argument("--samples", type=commands.count, default=None, help="trials per outer fold")
    p.add_argument("--workers-per-trial", type=commands.count, default=1)
    p.add_argument("--cpus-per-worker", type=commands.positive, default=None)
    p.add_argument(
        "--gpus-per-worker",
        type=commands.non_negative,
        default=0,
        help="GPUs per worker; a fraction shares a GPU between trials (e.g. 0.5: two trials)",
    )
    p.add_argument("--max-concurrent", type=commands.count, default=None)
    p.add_argument(
        "--epochs", type=commands.count, default=None, help="epochs per fold (default: config)"
    )
    p.add_argument(
        "--config",
        help="flat config overrides or a paper preset (configs/*.yaml): "
        "the fixed part of the search and its first point",
    )
    p.add_argument("--space", help="YAML/JSON search-space override file")
    p.add_argument("--storage", default="runs", help="results and checkpoints (path or URI)")
    p.add_argument("--name", default=None, help="experiment name (default: BRANCH[-smoke])")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument(
        "--smoke", action="store_true", help="tiny models, 3 trials, 2 outer folds, a few epochs"
    )
    p.add_argument("--seed", type=commands.natural, default=0)
    p.add_argument(
        "--repeats",
        type=commands.count,
        default=1,
        help="run the whole nested CV this many times: subject-independent folds drawn again "
        "each time, fixed folds (reference lists, official sets) with another training seed",
    )
    p.add_argument("--quiet", action="store_true", help="with --verbose: less Tune output")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's, Tune's and the workers' output on the console too (default: the log file)",
    )
    p.add_argument(
        "--worker-group",
        action="store_true",
        help="run 1-worker trials on a Ray Train worker group instead of in the trial's process",
    )
    p.add_argument("--mlflow", metavar="URI", help="also log every trial to an MLflow tracking URI")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument(
        "--num-cpus", type=commands.positive, default=None, help="CPUs of a local Ray instance"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = TuneArgs(**vars(build_parser().parse_args(argv)))
    started: dict = {}

    def body() -> int:
        text = tune(args, started)
        if args.verbose:
            print(text)
        return 0

    def stopped() -> str:
        from distributed.search.driver import progress

        if not started:
            return "nothing was started; run the same command again"
        again = shlex.join(["python", "-m", "distributed.tune", *argv] + (
            [] if args.resume else ["--resume"]
        ))  # fmt: skip
        if started["repeats"] == 1:
            kept = progress(started["root"], started["outers"], started["samples"])
        else:
            kept = "; ".join(
                f"repeat {r}: " + progress(
                    storage.join(started["root"], f"repeat{r}"), started["outers"],
                    started["samples"])
                for r in range(started["repeats"])
            )  # fmt: skip
        return f"{kept}; no report written; continue with: {again}"

    return commands.run_stoppable(body, stopped)


if __name__ == "__main__":
    sys.exit(main())
