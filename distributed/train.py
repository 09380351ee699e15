"""Distributed training with Ray Train (DDP) from the shards.

    python -m distributed.train {facial,gesture} --shards DIR --fold I [--inner J] --workers N
        [--gpu] [--epochs E] [--config FILE] [--out DIR] [--smoke]

``--inner J`` trains on inner split J of outer fold I and keeps the epoch that is best on its
validation split. Without ``--inner`` the model trains on the whole outer training fold for E
epochs and the last epoch is kept: nothing is ever selected on the outer test fold, which only
``python -m distributed.evaluate`` reads. Re-running with the same ``--out`` and ``--name``
resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

import pandas as pd

from datasets import shards, storage
from distributed.common import cluster_cpus, git_commit, init_ray
from distributed.config import SMOKE, TrainConfig, default_config, load_overrides
from distributed.worker import HISTORY_FILE, MODEL_FILE, train_loop_per_worker


@dataclass(frozen=True)
class FoldSpec:
    """Rows to train on, rows to validate on (or none), and a description for checkpoints."""

    train: tuple[str, ...]
    val: tuple[str, ...] | None
    info: dict


def outer_fold_specs(manifest: dict, fold: int, inner: int | None) -> FoldSpec:
    folds = manifest["folds"]["outer"]
    if not 0 <= fold < len(folds):
        raise ValueError(f"--fold must be in 0..{len(folds) - 1}, got {fold}")
    outer = folds[fold]
    if inner is None:
        return FoldSpec(tuple(outer["train"]), None, {"outer": fold, "inner": None})
    if not 0 <= inner < len(outer["inner"]):
        raise ValueError(f"--inner must be in 0..{len(outer['inner']) - 1}, got {inner}")
    split = outer["inner"][inner]
    return FoldSpec(tuple(split["train"]), tuple(split["val"]), {"outer": fold, "inner": inner})


def preprocessing_of(manifest: dict, cfg: TrainConfig) -> dict:
    """What a predictor must redo to feed this model (recorded in checkpoints)."""
    pre = {"kind": cfg.kind, **manifest.get("options", {})}
    if cfg.kind == "facial":
        pre.update(clips=cfg.clips, frames=cfg.frames)
    else:
        pre.update(
            representation=cfg.representation,
            rep_size=cfg.rep_size,
            rep_length=cfg.rep_length,
            joint_weight=cfg.joint_weight,
        )
    return pre


def shard_bytes_per_row(root: str) -> float:
    """Average stored bytes per row of a shard folder (to size folds before reading them)."""
    fs, _ = storage.resolve(root)
    files = shards.shard_files(root)
    total = sum(fs.get_file_info(storage.resolve(f)[1]).size for f in files)
    rows = shards.read_manifest(root)["counts"]["written"]
    return total / max(rows, 1)


def resources_per_worker(workers: int, use_gpu: bool, cpus_per_worker: float | None) -> dict:
    """CPU share per worker that leaves a CPU for Ray Data's read tasks (the 2-CPU hang)."""
    if cpus_per_worker is None:
        total = cluster_cpus()
        cpus_per_worker = 1.0 if total - 1 >= workers else max((total - 1) / workers, 0.25)
    res = {"CPU": cpus_per_worker}
    if use_gpu:
        res["GPU"] = 1
    return res


def prepare_datasets(
    shards_root: str,
    kind: str,
    specs: list[FoldSpec],
    forbidden_ids: frozenset[str] = frozenset(),
    materialize_bytes: float = 2 * 2**30,
) -> tuple[dict, list]:
    """Ray datasets for the folds of ``specs``: ({"train0": ds, "val0": ds, ...}, fold entries)."""
    from ray.data import DataContext

    from distributed.data import fold_dataset

    for spec in specs:
        for ids in (spec.train, spec.val or ()):
            leaked = forbidden_ids & set(ids)
            if leaked:
                raise ValueError(f"held-out rows {sorted(leaked)[:5]} are in a training split")
    ctx = DataContext.get_current()  # captured by the datasets below, also on the workers
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # same seed, same batches (also when materialised)
    row_bytes = shard_bytes_per_row(shards_root)

    def dataset(ids):
        ds = fold_dataset(shards_root, kind, list(ids))
        # Small folds are read once into the object store: re-running a streaming read every
        # epoch costs seconds of fixed overhead, more than a small epoch's training.
        return ds.materialize() if row_bytes * len(ids) <= materialize_bytes else ds

    datasets, folds = {}, []
    for j, spec in enumerate(specs):
        datasets[f"train{j}"] = dataset(spec.train)
        entry = {"train": f"train{j}", "val": None, "fold": spec.info}
        if spec.val:
            datasets[f"val{j}"] = dataset(spec.val)
            entry["val"] = f"val{j}"
        folds.append(entry)
    return datasets, folds


def fit_folds(
    cfg: TrainConfig,
    shards_root: str,
    specs: list[FoldSpec],
    *,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float | None = None,
    storage_path: str,
    name: str,
    forbidden_ids: frozenset[str] = frozenset(),
    write_model: bool = True,
    callbacks: list | None = None,
    max_failures: int = 2,
    fail_once: dict | None = None,
    dump_params_dir: str | None = None,
    placement_strategy: str = "PACK",
    materialize_bytes: float = 2 * 2**30,
    prepared: tuple[dict, list] | None = None,
):
    """Build and fit one TorchTrainer over ``specs`` (folds in sequence).

    ``prepared`` (from :func:`prepare_datasets`) lets a caller that fits many configurations on
    the same folds (the Tune driver) read the data once instead of once per fit.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    manifest = shards.read_manifest(shards_root)
    if manifest["kind"] != cfg.kind:
        raise ValueError(f"{shards_root} holds {manifest['kind']} shards, not {cfg.kind}")
    if prepared is None:
        prepared = prepare_datasets(shards_root, cfg.kind, specs, forbidden_ids, materialize_bytes)
    datasets, folds = prepared
    resources = resources_per_worker(workers, use_gpu, cpus_per_worker)
    loop_config = {
        "train": cfg.to_dict(),
        "folds": folds,
        "num_classes": len(manifest["classes"]),
        "num_joints": manifest.get("num_joints"),
        "forbidden_ids": sorted(forbidden_ids),
        "threads": max(1, int(resources["CPU"])),
        "fail_once": fail_once,
        "dump_params_dir": dump_params_dir,
        "model_writer": {
            "class_names": manifest["classes"],
            "preprocessing": preprocessing_of(manifest, cfg),
            "git_commit": git_commit(),
        }
        if write_model
        else None,
    }
    from ray.data import ExecutionOptions

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        datasets=datasets,
        # Validation splits are not split across workers: each worker scores every row, exactly.
        dataset_config=DataConfig(
            datasets_to_split=[k for k in datasets if k.startswith("train")],
            execution_options=ExecutionOptions(preserve_order=True),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    return Fit(result, _history(result))


@dataclass(frozen=True)
class Fit:
    """A finished fit: Ray's Result and every epoch's metrics (all folds, all workers' sums)."""

    result: object
    history: pd.DataFrame

    @property
    def metrics(self) -> dict:
        return self.history.iloc[-1].to_dict()


def _history(result) -> pd.DataFrame:
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, HISTORY_FILE)) as f:
            return pd.DataFrame(json.load(f))


def export_model(fit: Fit, out_file: str) -> str:
    """Copy the final checkpoint's self-describing model file to ``out_file`` (atomically)."""
    with fit.result.checkpoint.as_directory() as d:
        with open(os.path.join(d, MODEL_FILE), "rb") as f:
            data = f.read()
    storage.atomic_write_bytes(out_file, data)
    return out_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distributed.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=["facial", "gesture"])
    p.add_argument("--shards", required=True, help="shard folder (path or URI)")
    p.add_argument("--fold", type=int, required=True, help="outer fold index")
    p.add_argument("--inner", type=int, default=None, help="inner split index (validation)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, nccl, mixed precision")
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--config", help="JSON/YAML file of TrainConfig overrides")
    p.add_argument("--model", help="model name (sistcm, resnet_tlstm, accm, cnn)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default="runs", help="storage path for checkpoints (path or URI)")
    p.add_argument("--name", default=None, help="run name (default: derived from kind and fold)")
    p.add_argument("--smoke", action="store_true", help="tiny model and 2-3 epochs")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray instance")
    return p


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


def config_from_args(args) -> TrainConfig:
    overrides = dict(SMOKE[args.kind]) if args.smoke else {}
    overrides.update(load_overrides(args.config))
    for key in ("epochs", "model", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return default_config(args.kind, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    manifest = shards.read_manifest(args.shards)
    spec = outer_fold_specs(manifest, args.fold, args.inner)
    name = args.name or f"{args.kind}-fold{args.fold}" + (
        "" if args.inner is None else f"-inner{args.inner}"
    )
    out = args.out if storage.is_uri(args.out) else os.path.abspath(args.out)
    init_ray(args.address, args.num_cpus)
    outer_test = frozenset(manifest["folds"]["outer"][args.fold]["test"])
    fit = fit_folds(
        cfg,
        args.shards,
        [spec],
        workers=args.workers,
        use_gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        storage_path=out,
        name=name,
        forbidden_ids=outer_test,
    )
    model_file = export_model(fit, storage.join(out, name, "model.pt"))
    cols = [c for c in EPOCH_COLUMNS if c in fit.history]
    print(fit.history[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    last = fit.metrics
    if "val_uar" in fit.history:
        print(f"kept: epoch {int(last['best_epoch'])} (best validation {cfg.select_metric.upper()} "
              f"{last['best']:.3f})")  # fmt: skip
    else:
        print(f"kept: the last epoch ({int(last['epoch'])}); no validation split")
    print(f"model: {model_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
