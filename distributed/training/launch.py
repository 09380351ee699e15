"""Fitting: folds -> datasets -> the training loop on its host -> Fit.

Library code behind ``distributed.train`` (one fold), ``distributed.tune`` (every inner split of
a trial in one fit) and ``distributed.fusion``. The loop (``distributed.training.loop``) runs in
this
process (``workers=0``; in a Tune trial it reports to Tune) or on a Ray Train worker group (one
TorchTrainer fit, DDP). One fit can run several folds in sequence, so the fixed cost of a worker
group is paid once per fit, not once per fold.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from branches import DataInfo, get_branch
from datasets import storage
from datasets.manifest import Manifest, read_manifest
from datasets.protocols import Protocol
from distributed.core.config import TrainConfig
from distributed.core.runtime import cluster_cpus, git_commit, ray_data_console_quiet
from distributed.training.checkpoint import TrainedOn
from distributed.training.loop import (
    CHECKPOINT_EVERY,
    HISTORY_FILE,
    MODEL_FILE,
    process_group_backend,
    train_folds,
)
from distributed.training.ray_host import train_loop_per_worker
from distributed.training.run_file import claim, fold_identity, identity

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
    if not 0 <= gib < float("inf"):  # (also NaN)
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
    """Workers of a fit: how many, GPUs and CPUs each (CPUs None: leave one CPU for Ray Data).

    ``workers=0`` runs the loop in the calling process (``distributed.training.local_hosts``: one
    worker,
    no process group, no worker group), on the GPU when ``gpus`` > 0. ``gpus`` may be a
    fraction: workers of several fits then share one GPU."""

    workers: int = 1
    gpus: float = 0.0
    cpus_per_worker: float | None = None
    placement_strategy: str = "PACK"

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.gpus < 0:
            raise ValueError(f"GPUs per worker must be >= 0, got {self.gpus}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"CPUs per worker must be > 0, got {self.cpus_per_worker}")

    @property
    def local(self) -> bool:
        return self.workers == 0

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0

    def per_worker(self) -> dict:
        """CPU share per worker that leaves a CPU for Ray Data's read tasks (the 2-CPU hang),
        and the worker's GPUs."""
        cpus = self.cpus_per_worker
        workers = max(self.workers, 1)
        if cpus is None:
            total = cluster_cpus()
            cpus = 1.0 if total - 1 >= workers else max((total - 1) / workers, 0.25)
        res = {"CPU": cpus}
        if self.use_gpu:
            res["GPU"] = self.gpus
        return res


def trial_placement(
    workers: int, gpus: float, node_gpus: Sequence[float], autoscaling: bool
) -> tuple[str, str]:
    """Where the workers of one GPU fit go: (placement strategy, a note for the console).

    Several GPU workers are packed on one node (``STRICT_PACK``: NVLink/PCIe between them
    instead of NCCL over the network) when a node of the cluster can hold them all, or, on an
    autoscaling cluster, expecting a node type that does (``cluster.yaml`` has one with 8
    GPUs). On a fixed cluster whose largest node is smaller, the workers spread (``PACK``)."""
    need = workers * gpus
    if workers <= 1 or gpus <= 0:
        return "PACK", ""
    largest = max(node_gpus, default=0.0)
    if largest + 1e-9 >= need or autoscaling:
        return "STRICT_PACK", f"each fit's {workers} GPU workers on one node"
    return "PACK", (
        f"each fit's {workers} GPU workers ({need:g} GPUs) span nodes: the largest node has "
        f"{largest:g} GPUs, so gradients cross the network"
    )


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

    A training fold whose planned row groups hold at most ``materialize_bytes`` stored bytes
    (default: :func:`materialize_budget`) is read once into the object store; a larger one is a
    :class:`distributed.training.stream.StreamedFold`: the workers read their share of its row
    groups
    from the shards every epoch, shuffled in a bounded buffer. Validation folds are always
    streamed: each worker reads and scores its own exact part of them."""
    from ray.data import DataContext

    from distributed.training.ray_data import FoldDatasource, read_fold, shard_row_groups
    from distributed.training.stream import StreamedFold

    budget = materialize_budget() if materialize_bytes is None else materialize_bytes

    manifest = read_manifest(root)
    for spec in specs:
        for ids in (spec.train, spec.val or ()):
            leaked = forbidden & set(ids)
            if leaked:
                raise ValueError(f"held-out rows {sorted(leaked)[:5]} are in a training split")
    ctx = DataContext.get_current()  # captured by the datasets below, also on the workers
    ctx.enable_progress_bars = False
    ray_data_console_quiet()  # (its lines go to ray-data.log)
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # same seed, same batches (also when materialised)
    columns = list(get_branch(manifest.kind).columns)
    groups = shard_row_groups(root, columns)  # footers read once for every fold

    def dataset(ids, split: bool):
        if not ids:
            raise ValueError(f"{root}: empty fold")
        if not split:  # validation: every worker scores its exact part, read by itself
            return StreamedFold.plan(groups, columns, ids, split)
        source = FoldDatasource(root, columns, list(ids), groups)
        if source.planned_bytes > budget:  # read by the workers themselves, every epoch
            return StreamedFold.plan(groups, columns, ids, split)
        # Small folds are read once into the object store (a Ray dataset, split by Ray Train).
        return read_fold(source).materialize()

    datasets, folds = {}, []
    for j, spec in enumerate(specs):
        datasets[f"train{j}"] = dataset(spec.train, split=True)
        entry = {"train": f"train{j}", "val": None, "fold": spec.trained_on.to_json(),
                 "identity": fold_identity(spec)}  # fmt: skip
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
    loop: Callable[[dict, object], None] = train_folds,
    tune_report: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
    on_report: Callable[[dict], None] | None = None,
    keep_models: str | None = None,
) -> Fit:
    """Run the training loop over the folds of ``data`` (in sequence) on the hosts
    ``resources`` ask for: in this process (``workers=0``; inside a Tune trial with
    ``tune_report``, reporting to Tune) or on a Ray Train worker group (one TorchTrainer fit;
    with ``tune_report`` its reports also go to Tune through ``TuneReportCallback``).

    A fit that keeps its checkpoints under ``storage_path/name`` first checks what they were
    trained with (``distributed.training.run_file``): the same inputs continue from the newest one,
    other
    inputs are refused (``UsageError``, naming each difference) before any work.

    ``loop`` is the training loop (tests wrap it to inject faults); ``on_report`` sees each
    epoch's metrics of an in-process fit; ``keep_models``: a folder (path or URI) where each
    fold's kept model is written as ``split{j}.pt`` (with ``write_model``). Raises the fit's
    error."""
    if data.manifest.kind != cfg.branch:
        raise ValueError(f"{data.root} holds {data.manifest.kind} shards, not {cfg.branch}")
    run = identity(cfg, [f["identity"] for f in data.folds], data.manifest)
    if not (resources.local and tune_report):  # (a Tune trial's own process: Tune keeps it)
        claim(storage.join(storage_path, name), run, host_of(resources), data.root)
    per_worker = resources.per_worker()
    loop_config = {
        "train": cfg.to_dict(),
        "data": data_info(data.manifest).to_json(),
        "folds": data.folds,
        "forbidden_ids": sorted(data.forbidden),
        "threads": max(1, int(per_worker["CPU"])),
        "model_writer": {"git_commit": git_commit(), "keep": keep_models} if write_model else None,
        "checkpoint_every": checkpoint_every,
        "run": run,
    }
    if resources.local:
        return _fit_here(loop_config, data, resources, storage_path, name, loop, tune_report,
                         on_report)  # fmt: skip
    return _fit_on_workers(loop_config, data, resources, storage_path, name, loop, tune_report,
                           callbacks, max_failures)  # fmt: skip


def host_of(resources: Resources) -> str:
    """Which host keeps a fit's checkpoints (``distributed.training.run_file.HOSTS``)."""
    return "local" if resources.local else "worker group"


def local_device(resources: Resources) -> str:
    """The device of an in-process fit: the GPU Ray (or the machine) gives this process."""
    if not resources.use_gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("a GPU was asked for, but this process sees no CUDA device")
    return "cuda"


def _fit_here(loop_config, data, resources, storage_path, name, loop, tune_report, on_report):
    from distributed.training.local_hosts import LocalHost, TuneTrialHost
    from distributed.training.ray_data import RayFold
    from distributed.training.stream import StreamedFold

    datasets = {
        k: v if isinstance(v, StreamedFold) else RayFold(v) for k, v in data.datasets.items()
    }
    device = local_device(resources)
    if tune_report:
        host = TuneTrialHost(datasets, device)
    else:
        host = LocalHost(datasets, storage.join(storage_path, name), device, on_report)
    loop(loop_config, host)
    if host.checkpoint is None:  # a Tune trial: Tune keeps its checkpoints
        return Fit(pd.DataFrame(host.history), None, None)
    with host.filesystem.open_input_file(posixpath.join(host.checkpoint, HISTORY_FILE)) as f:
        history = json.load(f)  # the whole run's, also the epochs before a resume
    return Fit(pd.DataFrame(history), host.filesystem, host.checkpoint)


def _fit_on_workers(
    loop_config, data, resources, storage_path, name, loop, tune_report, callbacks, max_failures
):
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from distributed.training.stream import StreamedFold

    callbacks = list(callbacks or [])
    if tune_report:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    scaling = ScalingConfig(
        num_workers=resources.workers,
        use_gpu=resources.use_gpu,
        resources_per_worker=resources.per_worker(),
        placement_strategy=resources.placement_strategy,
    )
    streamed = {k: v for k, v in data.datasets.items() if isinstance(v, StreamedFold)}
    datasets = {k: v for k, v in data.datasets.items() if k not in streamed}
    loop_config["streamed"] = streamed  # the workers read these folds themselves
    trainer = TorchTrainer(
        functools.partial(train_loop_per_worker, loop=loop),
        train_loop_config=loop_config,
        scaling_config=scaling,
        torch_config=TorchConfig(backend=process_group_backend(resources.use_gpu)),
        datasets=datasets or None,
        dataset_config=DataConfig(
            datasets_to_split=list(datasets),
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
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    ckpt = result.checkpoint
    with ckpt.filesystem.open_input_file(posixpath.join(ckpt.path, HISTORY_FILE)) as f:
        history = json.load(f)
    return Fit(pd.DataFrame(history), ckpt.filesystem, ckpt.path)


@dataclass(frozen=True)
class Fit:
    """A finished fit: every epoch's metrics (all folds, all workers' sums) and where its final
    checkpoint is (a filesystem and a path on it; None for a Tune trial's in-process fit, whose
    checkpoints Tune keeps)."""

    history: pd.DataFrame
    filesystem: object
    checkpoint: str | None

    @property
    def metrics(self) -> dict:
        return self.history.iloc[-1].to_dict()

    def read(self, name: str) -> bytes:
        """A file of the final checkpoint."""
        if self.checkpoint is None:
            raise ValueError("this fit kept no checkpoint of its own")
        with self.filesystem.open_input_file(posixpath.join(self.checkpoint, name)) as f:
            return f.read()


def export_model(fit: Fit, out_file: str) -> str:
    """Copy the final checkpoint's self-describing model file to ``out_file`` (atomically)."""
    storage.atomic_write_bytes(out_file, fit.read(MODEL_FILE))
    return out_file
