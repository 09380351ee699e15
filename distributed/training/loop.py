"""The training loop: folds, epochs, mixed precision, metrics, model selection, checkpoint state.

No Ray here. The loop runs the same way on every host; what a host provides is small
(:class:`Host`): this worker's rank and the world size, its device, its part of each fold's
rows, the model wrapped for the process group, the state to resume from, and a place to report
each epoch's metrics with an optional checkpoint directory. Three hosts implement it:
``distributed.training.ray_host`` (a Ray Train worker, DDP),
``distributed.training.local_hosts.TuneTrialHost`` (a
Ray Tune function trial, in the trial's own process) and
``distributed.training.local_hosts.LocalHost``
(a plain run in the calling process: ``train --local``, the final retrain of a local search, and
``benchmarks/gpu.py`` on a machine without Ray).

One call can run several folds in sequence (a search runs every inner split of a trial in one
call, so a worker group is started once per trial). After each epoch every worker reports;
rank 0 attaches a checkpoint when the epoch improved the fold's best validation score, every
``checkpoint_every`` epochs, and at each fold's last epoch. A checkpoint holds the full training
state (model, optimiser, scheduler, gradient scaler, best-so-far model of the current fold), so a
resume from any of them continues exactly: every epoch's random numbers are seeded from (seed,
fold, epoch), never carried over from the epochs before.

``batch_size`` is the global batch: each of ``w`` workers takes ``batch_size // w`` rows per
step, so a configuration means the same optimisation whatever the number of workers (the
learning rate is used as it is). On CUDA with several workers and fewer than
:data:`SYNC_BN_BELOW` rows per worker, BatchNorm layers are synchronised across workers.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from branches import DataInfo, get_branch
from distributed.core.config import TrainConfig
from distributed.training.steps import EpochStats, build, forward, loss_of, model_inputs

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"  # every epoch's metrics of the run so far
CHECKPOINT_EVERY = 10  # epochs between checkpoints when nothing improved
SYNC_BN_BELOW = 16  # per-worker batch under which BatchNorm is synchronised on CUDA


class Host(Protocol):
    """What the loop needs from whoever runs it."""

    rank: int
    world: int
    device: torch.device

    def shard(self, key: str):
        """This worker's part of a fold: an object with ``iter_torch_batches(batch_size=,
        collate_fn=, prefetch_batches=, local_shuffle_buffer_size=, local_shuffle_seed=)``
        taking a plain collate callable (dict of columns -> dict of tensors)."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this worker's device, wrapped for the process group if there is one."""

    def restore(self) -> dict | None:
        """The training state of the newest checkpoint of this run, or None."""

    def report(self, metrics: dict, directory: str | None) -> None:
        """One epoch's metrics (every worker calls it) and, on rank 0, a checkpoint directory."""


def process_group_backend(use_gpu: bool) -> str:
    """The torch.distributed backend of a worker group: gloo on CPUs; on GPUs NCCL for CUDA
    tensors and gloo for any CPU tensor a collective is handed (NCCL has no CPU backend)."""
    return "cpu:gloo,cuda:nccl" if use_gpu else "gloo"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision an ``auto`` config runs in on ``device``: bf16 on CUDA devices that support
    it, fp16 (with a gradient scaler) on older ones, fp32 on the CPU."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str):
    dtype = AUTOCAST[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return opt, sched


def per_worker_batch(batch_size: int, world: int) -> int:
    """Rows per worker and step of a global ``batch_size`` split over ``world`` workers."""
    if batch_size < world:
        raise ValueError(
            f"batch_size {batch_size} is the global batch: it cannot be split over {world} "
            f"workers; use a batch_size of at least {world} (or fewer workers)"
        )
    return batch_size // world


def for_device(
    model: torch.nn.Module, device: torch.device, world: int, batch: int
) -> torch.nn.Module:
    """The model as it trains on ``device``: on CUDA channels-last (the frames arrive NHWC) and,
    with several workers of fewer than :data:`SYNC_BN_BELOW` rows each, with BatchNorm
    synchronised across workers (PyTorch's SyncBatchNorm runs on GPUs only)."""
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        if world > 1 and batch < SYNC_BN_BELOW:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class Pinned:
    """A collate whose tensors land in page-locked memory, so that ``.to(device,
    non_blocking=True)`` really overlaps the copy with compute (done on the feed's thread)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, batch):
        out = self.fn(batch)
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def make_collate(cfg: TrainConfig, train: bool, epoch: int, forbidden, device: torch.device):
    """The branch's plain collate for ``cfg`` (pinned when batches go to a GPU)."""
    fn = get_branch(cfg.branch).collate(cfg.model, train=train, seed=cfg.seed, epoch=epoch,
                                        forbidden=forbidden)  # fmt: skip
    return Pinned(fn) if device.type == "cuda" else fn


def run_epoch(
    cfg,
    model,
    shard,
    heads,
    num_classes,
    device,
    *,
    train,
    epoch,
    batch_size,
    precision="fp32",
    opt=None,
    scaler=None,
    forbidden=frozenset(),
    wait=None,
):
    """One pass over this worker's shard; returns EpochStats summed over workers (one
    collective, on the device, at the end)."""
    stats = EpochStats(heads, num_classes, device)
    model.train(train)
    batches = shard.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=make_collate(cfg, train, epoch, forbidden, device),
        prefetch_batches=2,
        local_shuffle_buffer_size=4 * batch_size if train else None,
        local_shuffle_seed=cfg.seed * 100003 + epoch if train else None,
    )
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        if wait is not None:
            wait[0] += time.perf_counter() - t0
        if batch is None:
            break
        y = batch["y"].to(device, non_blocking=True)
        with torch.set_grad_enabled(train), autocast(device, precision):
            outputs = forward(cfg, model, model_inputs(cfg, batch, device))
            loss = loss_of(cfg, outputs, y)
        if train:
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        stats.add(loss.detach(), outputs, y)
    stats.all_reduce()
    return stats


@torch.no_grad()
def recompute_bn_stats(
    cfg, model, shard, device, *, epoch, batch_size=None, precision="fp32", forbidden=frozenset()
) -> int:
    """Precise BatchNorm: replace the running statistics of every BatchNorm layer by the mean of
    the batch statistics of one forward pass over this worker's training shard, averaged over
    workers; returns the number of batches used.

    The running averages (momentum 0.1) trail weights that moved during the epoch; with small
    batches, few steps per epoch and no pretrained statistics they can be far enough off that the
    eval-mode model predicts one class while the weights are good. Training is unchanged: only
    the statistics used in eval mode (validation, the saved model) are recomputed.
    """
    import torch.distributed as dist

    net = unwrap(model)
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    net.train()
    n = 0
    for batch in shard.iter_torch_batches(
        batch_size=batch_size or cfg.batch_size,
        collate_fn=make_collate(cfg, True, epoch, forbidden, device),
        prefetch_batches=2,
    ):
        with autocast(device, precision):
            net(model_inputs(cfg, batch, device))
        n += 1
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # every worker saw a different part of the data: average the statistics, weighted by
        # batches seen (a worker with an empty shard contributes nothing)
        weight = torch.tensor([float(n)], device=device)
        dist.all_reduce(weight)
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                buf.mul_(n)
                dist.all_reduce(buf)
                buf.div_(weight.clamp_min(1.0))
    return n


def state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_state(directory: str) -> dict:
    """The training state saved in a checkpoint directory."""
    path = os.path.join(directory, STATE_FILE)
    return torch.load(path, map_location="cpu", weights_only=True)


def train_folds(config: dict, host: Host) -> None:
    """Train every fold of ``config`` (see the module's text) on ``host``.

    ``config`` is plain values (it crosses processes): ``train`` (a TrainConfig dict), ``data``
    (DataInfo), ``folds`` ([{"train": key, "val": key or None, "fold": {...}}]),
    ``forbidden_ids``, ``threads``, ``model_writer`` ({"git_commit"} or None),
    ``checkpoint_every`` and ``run`` (the run's identity, ``distributed.training.run_file``: kept
    in every
    checkpoint state; a state of another identity is refused on restore)."""
    cfg = TrainConfig.from_dict(config["train"])
    data = DataInfo.from_json(config["data"])
    folds: list[dict] = config["folds"]
    num_classes = data.num_classes
    forbidden = frozenset(config.get("forbidden_ids", ()))
    every = int(config.get("checkpoint_every", CHECKPOINT_EVERY))
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = host.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels
    precision = resolve_precision(cfg.precision, device)
    batch = per_worker_batch(cfg.batch_size, host.world)
    heads = get_branch(cfg.branch).heads
    select = f"val_{cfg.select_metric}"

    resume = host.restore()
    run = config.get(
        "run"
    )  # what the run depends on (distributed.training.run_file), kept in its states
    if resume and run is not None and resume.get("run", run) != run:
        from distributed.training.run_file import differences

        said = "; ".join(differences(resume["run"], run))
        raise ValueError(f"the checkpoint to resume from was trained with other inputs: {said}")
    fold_results: list[dict] = list(resume["fold_results"]) if resume else []
    history: list[dict] = list(resume["history"]) if resume else []
    start_fold = resume["fold"] if resume else 0

    for j in range(start_fold, len(folds)):
        spec = folds[j]
        torch.manual_seed(cfg.seed + 1000 * j)
        np.random.seed(cfg.seed + 1000 * j)
        model = host.prepare_model(for_device(build(cfg, data), device, host.world, batch))
        opt, sched = make_optimizer(cfg, model)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        start_epoch, best, best_epoch, best_state = 0, -1.0, -1, None
        if resume and resume["fold"] == j and "model" in resume:
            unwrap(model).load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            if "scaler" in resume:
                scaler.load_state_dict(resume["scaler"])
            start_epoch, best, best_epoch = (
                resume["epoch"] + 1,
                resume["best"],
                resume["best_epoch"],
            )
            best_state = resume["best_state"]
        resume = None
        train_shard = host.shard(spec["train"])
        val_shard = host.shard(spec["val"]) if spec.get("val") else None
        common = dict(batch_size=batch, precision=precision, forbidden=forbidden)

        for epoch in range(start_epoch, cfg.epochs):
            # this epoch's random numbers (dropout, ...) depend on (seed, fold, epoch) only,
            # so a resume from any checkpoint continues exactly
            torch.manual_seed(cfg.seed + 1000 * j + 1_000_003 * (epoch + 1))
            t0, wait = time.perf_counter(), [0.0]
            tr = run_epoch(cfg, model, train_shard, heads, num_classes, device, train=True,
                           epoch=epoch, opt=opt, scaler=scaler, wait=wait, **common)  # fmt: skip
            sched.step()
            metrics = {"fold_index": j, "epoch": epoch, **tr.metrics("train", cfg.head)}
            metrics["data_wait_fraction"] = wait[0] / max(time.perf_counter() - t0, 1e-9)
            metrics.update(workers=host.world, batch_per_worker=batch)
            last_epoch = epoch == cfg.epochs - 1
            # eval-mode statistics are needed for validation and for the model of the last epoch
            if cfg.precise_bn and (val_shard is not None or last_epoch):
                recompute_bn_stats(cfg, model, train_shard, device, epoch=epoch, **common)
            if val_shard is not None:
                va = run_epoch(cfg, model, val_shard, heads, num_classes, device, train=False,
                               epoch=epoch, **common)  # fmt: skip
                metrics.update(va.metrics("val", cfg.head))
                score = metrics[select]
            else:
                score = float(epoch)  # no validation split: the last epoch is the model kept
            improved = score > best
            if improved:
                best, best_epoch = score, epoch
                best_state = {
                    k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()
                }
            done = fold_results + ([{"best": best, "best_epoch": best_epoch}] if last_epoch else [])
            current = [r["best"] for r in fold_results] + [best]
            metrics.update(
                best=best,
                best_epoch=best_epoch,
                folds_done=len(done),
                cv_metric=float(np.mean(current)) if val_shard is not None else float("nan"),
                epoch_seconds=time.perf_counter() - t0,
            )
            history.append(metrics)
            save = last_epoch or (improved and val_shard is not None) or (epoch + 1) % every == 0
            if not save:
                host.report(metrics, None)
                continue
            if last_epoch:  # fold finished: a resume starts the next fold from scratch
                state = {"fold": j + 1, "fold_results": done, "history": history, "run": run}
            else:
                state = {
                    "fold": j,
                    "fold_results": fold_results,
                    "history": history,
                    "epoch": epoch,
                    "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "best": best,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "run": run,
                }
            with tempfile.TemporaryDirectory() as d:
                if host.rank == 0:
                    with open(os.path.join(d, STATE_FILE), "wb") as f:
                        f.write(state_bytes(state))
                    with open(os.path.join(d, HISTORY_FILE), "w") as f:
                        json.dump(history, f)
                    if last_epoch and config.get("model_writer") is not None:
                        _write_model(config["model_writer"], cfg, data, best_state, d, spec, j)
                host.report(metrics, d if host.rank == 0 else None)
        fold_results = done


def _write_model(
    info: dict,
    cfg: TrainConfig,
    data: DataInfo,
    best_state: dict,
    directory: str,
    spec: dict,
    fold: int,
) -> None:
    """The kept model of this fold as a self-describing file inside the checkpoint, and with
    ``info["keep"]`` also as ``KEEP/split{fold}.pt`` (a path or a bucket)."""
    from datasets import storage
    from distributed.training.checkpoint import TrainedOn, save_model

    model = build(cfg, data, pretrained=False)
    model.load_state_dict(best_state)
    trained_on = TrainedOn.from_json(spec.get("fold"))
    path = os.path.join(directory, MODEL_FILE)
    save_model(path, model, cfg, data, trained_on, info["git_commit"])
    if info.get("keep"):
        with open(path, "rb") as f:
            storage.atomic_write_bytes(storage.join(info["keep"], f"split{fold}.pt"), f.read())
