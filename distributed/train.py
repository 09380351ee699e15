"""Distributed training with Ray Train (DDP) from the shards.

``--inner J`` trains on inner split J of outer fold I and keeps the epoch that is best on its
validation split. Without ``--inner`` the model trains on the whole outer training fold for E
epochs and the last epoch is kept: nothing is ever selected on the outer test fold, which only
``python -m distributed.evaluate`` reads. Re-running with the same ``--out`` and ``--name`` and
the same inputs (config, fold, shards, host) resumes from the latest checkpoint, or for a
finished run prints its table and writes its model again; other inputs are refused, naming
each difference, before Ray starts (``OUT/NAME/run.json`` says what a run was trained with).
``--local`` (or ``--workers 0``) runs the same loop in this process, without a worker group:
seconds faster, on this machine's GPU with ``--gpu``, and ``pdb`` (``python -m pdb -m
distributed.train ... --local``) steps through it. ``batch_size`` is the batch of one step over
all ``--workers`` (each takes batch_size // workers rows).
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
from distributed.core import capacity, commands
from distributed.core.config import TrainConfig, default_config, load_config_file


@dataclass(frozen=True)
class TrainArgs:
    """The parsed command line of ``distributed.train``."""

    branch: str
    shards: str
    fold: int
    inner: int | None = None
    protocol: str | None = None
    workers: int = 1
    local: bool = False
    gpu: bool = False
    cpus_per_worker: float | None = None
    epochs: int | None = None
    config: str | None = None
    model: str | None = None
    seed: int | None = None
    out: str = "runs"
    name: str | None = None
    smoke: bool = False
    address: str | None = None
    num_cpus: float | None = None
    materialize_gib: float | None = None


EPOCH_COLUMNS = [
    "epoch",
    "train_loss",
    "train_war",
    "train_uar",
    "val_loss",
    "val_war",
    "val_uar",
    "val_p1_uar",
    "val_p2_uar",
    "val_p3_uar",
    "epoch_seconds",
]


def config_from(args: TrainArgs) -> TrainConfig:
    """The training configuration a command line asks for (smoke < file < flags)."""
    overrides = dict(get_branch(args.branch).smoke) if args.smoke else {}
    overrides.update(load_config_file(args.config, args.branch).overrides)
    for key in ("epochs", "model", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return default_config(args.branch, args.config or "config", **overrides)


def train(args: TrainArgs, started: dict | None = None):
    """Train one fold as the command line says; returns (Fit, model file path, config).
    ``started`` (when given) receives the run's folder once it is claimed."""
    from distributed.core.runtime import init_ray, node_gpus
    from distributed.training.launch import (
        Fit,
        Resources,
        export_model,
        fit_folds,
        host_of,
        materialize_budget,
        outer_fold_spec,
        prepare_datasets,
        trial_placement,
    )
    from distributed.training.run_file import claim, fold_identity, identity

    local = args.local or args.workers == 0
    if local and args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise commands.UsageError("--gpu with --local: this machine has no CUDA device")
    try:
        budget = materialize_budget(args.materialize_gib)
    except ValueError as err:
        raise commands.UsageError(f"--materialize-gib: {err}") from None
    cfg = config_from(args)
    manifest = read_manifest(args.shards)
    if manifest.kind != args.branch:
        raise commands.UsageError(f"{args.shards} holds {manifest.kind} shards, not {args.branch}")
    preset_protocol = load_config_file(args.config, args.branch).protocol
    key, protocol = read_protocol(args.shards, manifest, args.protocol or preset_protocol)
    spec = outer_fold_spec(protocol, key, args.fold, args.inner)
    name = args.name or f"{args.branch}-fold{args.fold}" + (
        "" if args.inner is None else f"-inner{args.inner}"
    )
    out = args.out if storage.is_uri(args.out) else os.path.abspath(args.out)
    storage.ensure_writable_dir(out, "--out folder")
    run_dir, model_file = storage.join(out, name), storage.join(out, name, "model.pt")
    host = host_of(Resources(0 if local else args.workers))
    ident = identity(cfg, [fold_identity(spec)], manifest)
    resume = claim(run_dir, ident, host, args.shards)  # before Ray starts
    if started is not None:
        started["run_dir"] = run_dir
    if resume is not None and resume.finished:
        import pandas as pd

        print(f"{run_dir} already finished (epoch {resume.epoch} of {resume.where} was its "
              f"last): {resume.path}; pass a new --name to train again", flush=True)  # fmt: skip
        fit = Fit(pd.DataFrame(resume.history()), resume.filesystem, resume.path)
        return fit, export_model(fit, model_file), cfg
    if resume is not None:
        print(f"resuming from epoch {resume.epoch} of {resume.where}: {resume.path}", flush=True)
    ray = init_ray(args.address, args.num_cpus)
    gpus = 1.0 if args.gpu else 0.0
    autoscaling = bool(args.address or os.environ.get("RAY_ADDRESS"))
    placement, note = trial_placement(0 if local else args.workers, gpus, node_gpus(), autoscaling)
    resources = Resources(0 if local else args.workers, gpus, args.cpus_per_worker, placement)
    request = capacity.Request(
        "the fit", resources.workers, resources.per_worker()["CPU"], gpus, placement,
        workers_flag="--workers", gpus_flag="--gpu",
    )  # fmt: skip
    if autoscaling:  # what its node types can start (its config on the head node), if known
        types = capacity.node_types()
        why = capacity.impossible_on_types(request, types) if types else None
    else:
        why = capacity.impossible(request, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    if why:
        raise commands.UsageError(why)
    if note:
        print(f"placement: {note}", flush=True)
    test_ids = frozenset(protocol.fold(args.fold).test)
    data = prepare_datasets(args.shards, [spec], test_ids, materialize_bytes=budget)
    with capacity.Watch(
        request, lambda: ray.util.placement_group_table().values(), ray.available_resources,
        lambda line: print(line, flush=True),
    ):  # fmt: skip
        fit = fit_folds(cfg, data, resources=resources, storage_path=out, name=name)
    return fit, export_model(fit, model_file), cfg


def build_parser() -> argparse.ArgumentParser:
    p = commands.Parser(
        prog="python -m distributed.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("branch", type=branch_arg, metavar="BRANCH", help=BRANCH_HELP)
    p.add_argument("--shards", required=True, help="shard folder (path or URI)")
    p.add_argument("--fold", type=int, required=True, help="outer fold index")
    p.add_argument("--inner", type=int, default=None, help="inner split index (validation)")
    p.add_argument("--protocol", help="stored protocol (default: the shards' default)")
    p.add_argument(
        "--workers", type=commands.natural, default=1, help="Ray Train workers (DDP); 0: --local"
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="the loop runs in this process (no worker group; pdb works)",
    )
    p.add_argument(
        "--gpu", action="store_true", help="one GPU per worker (NCCL; the config's precision)"
    )
    p.add_argument("--cpus-per-worker", type=commands.positive, default=None)
    p.add_argument("--epochs", type=commands.count, default=None)
    p.add_argument(
        "--config",
        help="JSON/YAML file of flat config overrides (e.g. lr, frames, depth, head), or a paper "
        "preset (configs/*.yaml; its protocol is the default --protocol)",
    )
    p.add_argument("--model", help="model name (sistcm, resnet_tlstm, accm, cnn)")
    p.add_argument("--seed", type=commands.natural, default=None)
    p.add_argument("--out", default="runs", help="storage path for checkpoints (path or URI)")
    p.add_argument("--name", default=None, help="run name (default: derived from branch and fold)")
    p.add_argument("--smoke", action="store_true", help="tiny model and a few epochs")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument(
        "--num-cpus", type=commands.positive, default=None, help="CPUs of a local Ray instance"
    )
    p.add_argument(
        "--materialize-gib",
        type=commands.non_negative,
        default=None,
        help="folds up to this many GiB of stored rows are read once into Ray's object store, "
        "larger ones stream every epoch (default: $EMOVIS_MATERIALIZE_GIB or 2; 0 streams all)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = TrainArgs(**vars(build_parser().parse_args(argv)))
    started: dict = {}

    def body() -> int:
        fit, model_file, cfg = train(args, started)
        cols = [c for c in EPOCH_COLUMNS if c in fit.history]
        print(fit.history[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        last = fit.metrics
        if "val_uar" in fit.history:
            print(
                f"kept: epoch {int(last['best_epoch'])} (best validation "
                f"{cfg.select_metric.upper()} {last['best']:.3f})"
            )
        else:
            print(f"kept: the last epoch ({int(last['epoch'])}); no validation split")
        print(f"model: {model_file}")
        return 0

    def stopped() -> str:
        from distributed.training.run_file import history_of, newest_checkpoint

        again = shlex.join(["python", "-m", "distributed.train", *argv])
        newest = newest_checkpoint(started["run_dir"]) if started else None
        if newest is None:
            return f"no checkpoint was written; run the same command again: {again}"
        last = history_of(*newest)[-1]
        return (
            f"kept the checkpoint of epoch {int(last['epoch'])} (fold {int(last['fold_index'])})"
            f": {newest[1]}; no model written; the same command resumes from it: {again}"
        )

    return commands.run_stoppable(body, stopped)


if __name__ == "__main__":
    sys.exit(main())
