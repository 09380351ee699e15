"""Hosts of the training loop in the calling process: a plain run, and a Ray Tune function trial.

``LocalHost`` runs ``distributed.training.loop.train_folds`` in this process, on one device, with no
process group: ``train --local``, the final retrain of a search whose trials are local, and
``benchmarks/gpu.py`` (which has no Ray). It keeps its own checkpoints on the run's storage,
``STORAGE/NAME/checkpoint_NNNNNN`` (a path or a bucket; the newest :data:`KEEP`, each marked
whole by a file written last), and a re-run of the same run continues from the newest one.

``TuneTrialHost`` is the same loop inside a Ray Tune function trial (one-worker trials): each
epoch goes to Tune with Tune's own ``ray.tune.report`` (metrics, and a checkpoint that Tune
stores in the trial's folder), and a restarted trial resumes from ``ray.tune.get_checkpoint()``.

This module imports no Ray: the Tune host imports it when it is used.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

import pyarrow.fs as pafs
import torch

from datasets import storage
from distributed.training.loop import load_state

COMPLETE = ".complete"
KEEP = 2
PREFIX = "checkpoint_"


def checkpoints(root: str) -> list[tuple[int, str]]:
    """(index, inner path) of the whole checkpoints under ``root``, oldest first."""
    fs, inner = storage.resolve(root)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return []
    found = []
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=False)):
        name = info.base_name
        if info.type != pafs.FileType.Directory or not name.startswith(PREFIX):
            continue
        suffix = name[len(PREFIX) :]
        if not suffix.isdigit():
            continue
        if fs.get_file_info(posixpath.join(info.path, COMPLETE)).type == pafs.FileType.File:
            found.append((int(suffix), info.path))
    return sorted(found)


def persist(directory: str, root: str) -> str:
    """Copy a checkpoint directory to ``root/checkpoint_NNNNNN`` (marker last), drop all but the
    newest ``KEEP``; returns the stored checkpoint's inner path on ``root``'s filesystem."""
    fs, inner = storage.resolve(root)
    found = checkpoints(root)
    index = found[-1][0] + 1 if found else 0
    dest = posixpath.join(inner, f"{PREFIX}{index:06d}")
    fs.create_dir(dest, recursive=True)
    pafs.copy_files(
        directory, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )
    with fs.open_output_stream(posixpath.join(dest, COMPLETE)) as f:
        f.write(b"")
    for _, old in found[: max(0, len(found) + 1 - KEEP)]:
        fs.delete_dir(old)
    return dest


def _state_at(fs, path: str) -> dict:
    """The training state of a stored checkpoint (a local folder or one on a bucket)."""
    from distributed.training.loop import STATE_FILE

    with fs.open_input_file(posixpath.join(path, STATE_FILE)) as f:
        return torch.load(f, map_location="cpu", weights_only=True)


class LocalHost:
    """The loop in this process: world size 1, one device, checkpoints under ``run_dir``."""

    rank, world = 0, 1

    def __init__(
        self,
        datasets: dict,
        run_dir: str | None,
        device: str | torch.device = "cpu",
        on_report: Callable[[dict], None] | None = None,
    ):
        self.datasets, self.run_dir = datasets, run_dir
        self.device = torch.device(device)
        self.on_report = on_report
        self.history: list[dict] = []
        self.checkpoint: str | None = None  # inner path of the newest stored checkpoint
        self.filesystem = storage.resolve(run_dir)[0] if run_dir else None

    def shard(self, key: str):
        """The whole fold: a streamed one's reader, or a materialised one's iterator
        (``distributed.training.ray_data.RayFold``)."""
        return self.datasets[key].shard(0, 1)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def restore(self) -> dict | None:
        if not self.run_dir:
            return None
        found = checkpoints(self.run_dir)
        if not found:
            return None
        self.checkpoint = found[-1][1]
        return _state_at(self.filesystem, self.checkpoint)

    def report(self, metrics: dict, directory: str | None) -> None:
        if directory is not None and self.run_dir:
            self.checkpoint = persist(directory, self.run_dir)
        self.history.append(metrics)
        if self.on_report is not None:
            self.on_report(metrics)


class TuneTrialHost(LocalHost):
    """The loop inside a Ray Tune function trial: reports and checkpoints go through Tune."""

    def __init__(self, datasets: dict, device: str | torch.device = "cpu"):
        super().__init__(datasets, None, device)

    def restore(self) -> dict | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_state(d)

    def report(self, metrics: dict, directory: str | None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(directory) if directory else None
        self.history.append(metrics)
        tune.report(metrics, checkpoint=checkpoint)
