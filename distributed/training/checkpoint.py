"""Self-describing model files: the weights plus everything needed to rebuild, feed and report.

A model file holds the typed training configuration (``TrainConfig.to_dict``: the branch, its
model config — C, K, S, L, depth, head — and the optimisation), the data it was trained on
(classes, joints per frame, preprocessing options), the fold it was trained on (and so which
rows it must never be scored on as test data), the seed and the git commit. It is read with
``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from branches import DataInfo, get_branch
from distributed.core.config import TrainConfig

FORMAT = "emovis-checkpoint/2"


class CheckpointError(ValueError):
    """A file that is not a usable model checkpoint; the message names the file."""


@dataclass(frozen=True)
class TrainedOn:
    """Where a model's training rows came from: outer fold (None = not a fold of the manifest),
    inner split (None = the whole outer training fold), and the protocol's name."""

    outer: int | None = None
    inner: int | None = None
    protocol: str | None = None

    def to_json(self) -> dict:
        return {"outer": self.outer, "inner": self.inner, "protocol": self.protocol}

    @classmethod
    def from_json(cls, obj: dict | None) -> TrainedOn:
        obj = obj or {}
        return cls(obj.get("outer"), obj.get("inner"), obj.get("protocol"))


@dataclass(frozen=True)
class ModelFile:
    """A loaded model file: the model (eval mode) and what it says about itself."""

    model: torch.nn.Module
    config: TrainConfig
    data: DataInfo
    trained_on: TrainedOn
    git_commit: str

    @property
    def classes(self) -> tuple[str, ...]:
        return self.data.classes

    @property
    def branch(self):
        return get_branch(self.config.branch)


def save_model(
    path_or_buffer,
    model: torch.nn.Module,
    cfg: TrainConfig,
    data: DataInfo,
    trained_on: TrainedOn,
    git_commit: str,
) -> None:
    """Write a model file (to a local path or a binary buffer)."""
    blob = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "data": data.to_json(),
        "trained_on": trained_on.to_json(),
        "seed": cfg.seed,
        "git_commit": git_commit,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(blob, path_or_buffer)


def load_model(src, device: str | torch.device = "cpu", name: str | None = None) -> ModelFile:
    """Load a model file (a local path or its bytes); ``name`` is used in error messages."""
    from distributed.training.steps import build

    name = name or (src if isinstance(src, str) else "checkpoint")
    stream = io.BytesIO(src) if isinstance(src, bytes) else src
    try:
        blob = torch.load(stream, map_location=device, weights_only=True)
    except Exception as err:  # not a torch file, truncated, a pickle with code, ...
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{name}: not a readable model checkpoint ({first})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(
            f"{name}: not an emovis model checkpoint of format {FORMAT} (found {found!r})"
        )
    try:
        cfg = TrainConfig.from_dict(blob["config"], where=f"{name}: config")
        data = DataInfo.from_json(blob["data"])
        model = build(cfg, data, pretrained=False)
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{name}: inconsistent model checkpoint ({err})") from None
    model.to(device).eval()
    return ModelFile(
        model,
        cfg,
        data,
        TrainedOn.from_json(blob.get("trained_on")),
        blob.get("git_commit", "unknown"),
    )
