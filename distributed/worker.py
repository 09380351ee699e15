"""The Ray Train worker loop: one or several folds, epochs, DDP, checkpoints, resume.

One ``TorchTrainer.fit`` can run several folds in sequence (the Tune driver runs a whole trial —
every inner fold — in one fit, so the fixed cost of starting a worker group is paid once per
trial, not once per fold). After each epoch every worker reports; rank 0 attaches a checkpoint
holding the full training state (for resume after a lost worker) and the best-so-far model of the
current fold, chosen on that fold's validation split only.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from branches import DataInfo, get_branch
from distributed.config import TrainConfig
from distributed.data import make_collate
from distributed.steps import EpochStats, build, forward, loss_of, model_inputs

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"  # every epoch's metrics of the run so far


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


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


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
    opt=None,
    scaler=None,
    forbidden=frozenset(),
    wait=None,
):
    """One pass over a dataset shard; returns EpochStats summed over workers."""
    stats = EpochStats(heads, num_classes)
    model.train(train)
    use_amp = device.type == "cuda" and cfg.amp
    batches = shard.iter_torch_batches(
        batch_size=cfg.batch_size,
        collate_fn=make_collate(cfg, train, epoch, forbidden),
        prefetch_batches=2,
        local_shuffle_buffer_size=4 * cfg.batch_size if train else None,
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
        y = batch["y"].to(device)
        with torch.set_grad_enabled(train), torch.autocast(device.type, enabled=use_amp):
            outputs = forward(cfg, model, model_inputs(cfg, batch, device))
            loss = loss_of(cfg, outputs, y)
        if train:
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        stats.add(float(loss.detach()), outputs, y)
    if train:  # training rows are split across workers; every worker scores all validation rows
        stats.all_reduce()
    return stats


@torch.no_grad()
def recompute_bn_stats(cfg, model, shard, device, *, epoch, forbidden=frozenset()) -> int:
    """Precise BatchNorm: replace the running statistics of every BatchNorm layer by the mean of
    the batch statistics of one forward pass over this worker's training shard, averaged over
    workers; returns the number of batches used.

    The running averages (momentum 0.1) trail weights that moved during the epoch; with small
    batches, few steps per epoch and no pretrained statistics they can be far enough off that the
    eval-mode model predicts one class while the weights are good. Training is unchanged: only
    the statistics used in eval mode (validation, the saved model) are recomputed.
    """
    import torch.distributed as dist

    net = _unwrap(model)
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    net.train()
    use_amp = device.type == "cuda" and cfg.amp
    n = 0
    for batch in shard.iter_torch_batches(
        batch_size=cfg.batch_size,
        collate_fn=make_collate(cfg, True, epoch, forbidden),
        prefetch_batches=2,
    ):
        with torch.autocast(device.type, enabled=use_amp):
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


def _state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. ``config`` crosses processes: plain values, and the plans of
    streamed folds (``distributed.stream.StreamedFold``, frozen dataclasses of plain values)."""
    import ray.train
    import ray.train.torch

    from distributed import local_mode

    cfg = TrainConfig.from_dict(config["train"])
    data = DataInfo.from_json(config["data"])
    folds: list[dict] = config["folds"]  # [{"train": key, "val": key or None, "fold": {...}}]
    num_classes = data.num_classes
    forbidden = frozenset(config.get("forbidden_ids", ()))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = ray.train.torch.get_device()
    heads = get_branch(cfg.branch).heads
    select = f"val_{cfg.select_metric}"

    resume = None
    ckpt = local_mode.get_checkpoint(config)  # ray.train.get_checkpoint(), also in local mode
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    fold_results: list[dict] = list(resume["fold_results"]) if resume else []
    history: list[dict] = list(resume["history"]) if resume else []
    start_fold = resume["fold"] if resume else 0

    for j in range(start_fold, len(folds)):
        spec = folds[j]
        torch.manual_seed(cfg.seed + 1000 * j)
        np.random.seed(cfg.seed + 1000 * j)
        model = ray.train.torch.prepare_model(build(cfg, data))
        opt, sched = make_optimizer(cfg, model)
        scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.amp)
        start_epoch, best, best_epoch, best_state = 0, -1.0, -1, None
        if resume and resume["fold"] == j and "model" in resume:
            _unwrap(model).load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            start_epoch, best, best_epoch = (
                resume["epoch"] + 1,
                resume["best"],
                resume["best_epoch"],
            )
            best_state = resume["best_state"]
        resume = None
        train_shard = _dataset_shard(config, spec["train"], ctx)
        val_shard = _dataset_shard(config, spec["val"], ctx) if spec.get("val") else None

        for epoch in range(start_epoch, cfg.epochs):
            t0, wait = time.perf_counter(), [0.0]
            tr = run_epoch(
                cfg,
                model,
                train_shard,
                heads,
                num_classes,
                device,
                train=True,
                epoch=epoch,
                opt=opt,
                scaler=scaler,
                forbidden=forbidden,
                wait=wait,
            )
            sched.step()
            metrics = {"fold_index": j, "epoch": epoch, **tr.metrics("train", cfg.head)}
            metrics["data_wait_fraction"] = wait[0] / max(time.perf_counter() - t0, 1e-9)
            last_epoch = epoch == cfg.epochs - 1
            # eval-mode statistics are needed for validation and for the model of the last epoch
            if cfg.precise_bn and (val_shard is not None or last_epoch):
                recompute_bn_stats(
                    cfg, model, train_shard, device, epoch=epoch, forbidden=forbidden
                )
            if val_shard is not None:
                va = run_epoch(
                    cfg,
                    model,
                    val_shard,
                    heads,
                    num_classes,
                    device,
                    train=False,
                    epoch=epoch,
                    forbidden=forbidden,
                )
                metrics.update(va.metrics("val", cfg.head))
                score = metrics[select]
            else:
                score = float(epoch)  # no validation split: the last epoch is the model kept
            improved = score > best
            if improved:
                best, best_epoch = score, epoch
                best_state = {
                    k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()
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
            if last_epoch:  # fold finished: a resume starts the next fold from scratch
                state = {"fold": j + 1, "fold_results": done, "history": history}
            else:
                state = {
                    "fold": j,
                    "fold_results": fold_results,
                    "history": history,
                    "epoch": epoch,
                    "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "best": best,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                }
            with tempfile.TemporaryDirectory() as d:
                if rank == 0:
                    with open(os.path.join(d, STATE_FILE), "wb") as f:
                        f.write(_state_bytes(state))
                    with open(os.path.join(d, HISTORY_FILE), "w") as f:
                        json.dump(history, f)
                    if config.get("model_writer") is not None:
                        _write_model(config["model_writer"], cfg, data, best_state, d, spec)
                # ray.train.report(metrics, checkpoint), which local mode needs help with
                local_mode.report(config, metrics, d if rank == 0 else None)
        fold_results = done


def _dataset_shard(config: dict, key: str, ctx):
    """This worker's part of a fold: a streamed fold is read by the workers themselves
    (``distributed.stream``), a materialised one comes from Ray Train's dataset split."""
    import ray.train

    streamed = config.get("streamed") or {}
    if key in streamed:
        return streamed[key].shard(ctx.get_world_rank(), ctx.get_world_size())
    return ray.train.get_dataset_shard(key)


def _write_model(
    info: dict, cfg: TrainConfig, data: DataInfo, best_state: dict, directory: str, spec: dict
) -> None:
    """The best-so-far model of this fold as a self-describing file inside the checkpoint."""
    from distributed.checkpoint import TrainedOn, save_model

    model = build(cfg, data, pretrained=False)
    model.load_state_dict(best_state)
    trained_on = TrainedOn.from_json(spec.get("fold"))
    save_model(
        os.path.join(directory, MODEL_FILE), model, cfg, data, trained_on, info["git_commit"]
    )
