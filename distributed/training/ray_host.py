"""The Ray Train worker: ``distributed.training.loop.train_folds`` hosted by a Ray Train worker
group.

The host gives the loop this worker's rank, world size and device, its share of each fold
(Ray Train's split of a materialised fold, or its share of a streamed one, which it reads
itself), the model wrapped in DDP (``ray.train.torch.prepare_model``), the checkpoint Ray Train
restores after a lost worker, and ``ray.train.report``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distributed.training.loop import load_state, train_folds


class RayTrainHost:
    """A Ray Train worker as the loop's host (see ``distributed.training.loop.Host``)."""

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.streamed = config.get("streamed") or {}

    def shard(self, key: str):
        import ray.train

        from distributed.training.ray_data import RayShard

        if key in self.streamed:  # read by this worker itself, its share of the fold's rows
            return self.streamed[key].shard(self.rank, self.world)
        return RayShard(ray.train.get_dataset_shard(key))

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def restore(self) -> dict | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_state(d)

    def report(self, metrics: dict, directory: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict, loop: Callable = train_folds) -> None:
    """Ray Train entry point. ``config`` crosses processes: plain values, and the plans of
    streamed folds (``distributed.training.stream.StreamedFold``, frozen dataclasses of plain
    values).
    ``loop`` is the training loop (tests wrap it to inject faults)."""
    loop(config, RayTrainHost(config))
