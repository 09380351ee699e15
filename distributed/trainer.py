"""Fitting with Ray Train (DDP): folds -> Ray datasets -> one TorchTrainer fit -> Fit.

Library code behind ``distributed.train`` (one fold), ``distributed.tune`` (every inner split of
a trial in one fit) and ``distributed.fusion``. One fit can run several folds in sequence, so the
fixed cost of a worker group is paid once per fit, not once per fold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from branches import DataInfo, get_branch
from datasets import storage
from datasets.manifest import Manifest, read_manifest
from datasets.protocols import Protocol
from distributed.checkpoint import TrainedOn
from distributed.common import cluster_cpus, git_commit
from distributed.config import TrainConfig
from distributed.worker import HISTORY_FILE, MODEL_FILE, train_loop_per_worker

MATERIALIZE_GIB = 2.0  # default budget: folds up to this many stored bytes are materialised
MATERIALIZE_ENV = "EMOVIS_MATERIALIZE_GIB"


def materialize_budget(gib: float | None = None) -> float:
    """The materialisation budget in bytes: ``gib`` if given, else ``$EMOVIS_MATERIALIZE_GIB``,
    else 2 GiB. Folds above it stream every epoch (0 streams every fold)."""
    if gib is None:
        text = os.environ.get(MATERIALIZE_ENV, "").strip()
        try:
            gib = float(text) if text else MATERIALIZE_GIB
        except ValueError:
            raise ValueError(f"${MATERIALIZE_ENV}={text!r}: give a number of GiB") from None
    if gib < 0:
        raise ValueError(f"the materialisation budget must be >= 0 GiB, got {gib}")
    return gib * 2**30


@dataclass(frozen=True)
class FoldSpec:
    """Rows to train on, rows to validate on (or none), and where they come from."""

    train: tuple[str, ...]
    val: tuple[str, ...] | None
    trained_on: TrainedOn = field(default_factory=TrainedOn)


@dataclass(frozen=True)
class Resources:
    """Workers of a fit: how many, GPU or not, CPUs each (None: leave one CPU for Ray Data).

    ``workers=0`` is Ray Train's local mode: the loop runs in the calling process (one
    "worker", no DDP, no worker group; see ``distributed.local_mode``)."""

    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    placement_strategy: str = "PACK"

    @property
    def local(self) -> bool:
        return self.workers == 0

    def per_worker(self) -> dict:
        """CPU share per worker that leaves a CPU for Ray Data's read tasks (the 2-CPU hang)."""
        cpus = self.cpus_per_worker
        workers = max(self.workers, 1)
        if cpus is None:
            total = cluster_cpus()
            cpus = 1.0 if total - 1 >= workers else max((total - 1) / workers, 0.25)
        res = {"CPU": cpus}
        if self.use_gpu:
            res["GPU"] = 1
        return res


@dataclass(frozen=True)
class FoldData:
    """The Ray datasets of some folds, read once and shared by every fit on them."""

    root: str
    manifest: Manifest
    datasets: dict
    folds: list[dict]
    forbidden: frozenset[str]


def data_info(manifest: Manifest) -> DataInfo:
    """What models trained on these shards must know about them (stored in checkpoints)."""
    return DataInfo(tuple(manifest.classes), dict(manifest.options), manifest.num_joints)


def outer_fold_spec(protocol: Protocol, key: str, fold: int, inner: int | None) -> FoldSpec:
    """Inner split ``inner`` of outer fold ``fold`` of a protocol (train + validation), or with
    ``inner=None`` the whole outer training fold (no validation). Indices are range-checked."""
    outer = protocol.fold(fold)
    if inner is None:
        return FoldSpec(outer.train, None, TrainedOn(fold, None, key))
    split = outer.inner_split(inner, f"{protocol.name}: outer fold {fold}: ")
    return FoldSpec(split.train, split.val, TrainedOn(fold, inner, key))


def prepare_datasets(
    root: str,
    specs: Sequence[FoldSpec],
    forbidden: frozenset[str] = frozenset(),
    materialize_bytes: float | None = None,
) -> FoldData:
    """Ray datasets for the folds of ``specs`` (``train0``, ``val0``, ...).

    A fold whose planned row groups hold at most ``materialize_bytes`` stored bytes (default:
    :func:`materialize_budget`) is read once into the object store; a larger one is a
    :class:`distributed.stream.StreamedFold`: the workers read their share of its row groups
    from the shards every epoch, shuffled in a bounded buffer."""
    from ray.data import DataContext

    from distributed.data import FoldDatasource, read_fold, shard_row_groups
    from distributed.stream import StreamedFold

    budget = materialize_budget() if materialize_bytes is None else materialize_bytes

    manifest = read_manifest(root)
    for spec in specs:
        for ids in (spec.train, spec.val or ()):
            leaked = forbidden & set(ids)
            if leaked:
                raise ValueError(f"held-out rows {sorted(leaked)[:5]} are in a training split")
    ctx = DataContext.get_current()  # captured by the datasets below, also on the workers
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # same seed, same batches (also when materialised)
    columns = list(get_branch(manifest.kind).columns)
    groups = shard_row_groups(root, columns)  # footers read once for every fold

    def dataset(ids, split: bool):
        if not ids:
            raise ValueError(f"{root}: empty fold")
        source = FoldDatasource(root, columns, list(ids), groups)
        if source.planned_bytes > budget:  # read by the workers themselves, every epoch
            return StreamedFold.plan(groups, columns, ids, split)
        # Small folds are read once into the object store (a Ray dataset, split by Ray Train).
        return read_fold(source).materialize()

    datasets, folds = {}, []
    for j, spec in enumerate(specs):
        datasets[f"train{j}"] = dataset(spec.train, split=True)
        entry = {"train": f"train{j}", "val": None, "fold": spec.trained_on.to_json()}
        if spec.val:
            datasets[f"val{j}"] = dataset(spec.val, split=False)
            entry["val"] = f"val{j}"
        folds.append(entry)
    return FoldData(root, manifest, datasets, folds, frozenset(forbidden))


def fit_folds(
    cfg: TrainConfig,
    data: FoldData,
    *,
    storage_path: str,
    name: str,
    resources: Resources = Resources(),
    write_model: bool = True,
    callbacks: list | None = None,
    max_failures: int = 2,
    loop: Callable[[dict], None] = train_loop_per_worker,
    tune_report: bool = False,
) -> Fit:
    """Build and fit one TorchTrainer over the folds of ``data`` (in sequence).

    ``loop`` is the worker function (the default is the project's; tests wrap it to inject
    faults). ``tune_report``: inside a Tune trial, every report also goes to Tune (through
    ``TuneReportCallback`` on a worker group, directly in local mode). Raises the fit's error.
    """
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from distributed import local_mode

    if data.manifest.kind != cfg.branch:
        raise ValueError(f"{data.root} holds {data.manifest.kind} shards, not {cfg.branch}")
    per_worker = resources.per_worker()
    loop_config = {
        "train": cfg.to_dict(),
        "data": data_info(data.manifest).to_json(),
        "folds": data.folds,
        "forbidden_ids": sorted(data.forbidden),
        "threads": max(1, int(per_worker["CPU"])),
        "model_writer": {"git_commit": git_commit()} if write_model else None,
    }
    callbacks = list(callbacks or [])
    if resources.local:
        if resources.use_gpu:
            raise ValueError("local mode (workers=0) runs on the CPU; use a worker for a GPU")
        loop_config[local_mode.LOCAL_KEY] = local_mode.loop_settings(
            storage_path, name, tune_report
        )
        scaling = ScalingConfig(num_workers=0)
    else:
        if tune_report:
            from ray.tune.integration.ray_train import TuneReportCallback

            callbacks.append(TuneReportCallback())
        scaling = ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.use_gpu,
            resources_per_worker=per_worker,
            placement_strategy=resources.placement_strategy,
        )
    from distributed.stream import StreamedFold

    streamed = {k: v for k, v in data.datasets.items() if isinstance(v, StreamedFold)}
    datasets = {k: v for k, v in data.datasets.items() if k not in streamed}
    loop_config["streamed"] = streamed  # the workers read these folds themselves
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        datasets=datasets or None,
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
            callbacks=callbacks or None,
        ),
    )
    if resources.local and tune_report:
        with local_mode.tune_session_set_aside():
            result = trainer.fit()
    else:
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
