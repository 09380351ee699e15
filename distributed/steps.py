"""Torch-only pieces shared by the Train workers, evaluation and prediction (no Ray here)."""

from __future__ import annotations

import io
from dataclasses import fields

import numpy as np
import torch
import torch.nn.functional as F

from distributed.config import TrainConfig
from distributed.metrics import confusion, uar, war

CHECKPOINT_FORMAT = "emovis-checkpoint/1"


def heads_of(kind: str) -> tuple[str, ...]:
    return ("p1", "p2", "p3", "fused") if kind == "facial" else ("fused",)


def build(
    cfg: TrainConfig, num_classes: int, num_joints: int | None = None, pretrained: bool = True
) -> torch.nn.Module:
    """The model of ``cfg``; with ``pretrained`` the facial backbone gets the ImageNet weights."""
    from models import build_model

    kwargs = cfg.model_kwargs(num_classes, num_joints)
    model = build_model(cfg.model, **kwargs)
    if pretrained and cfg.kind == "facial" and cfg.imagenet_weights:
        from models.sistcm import load_imagenet_weights

        load_imagenet_weights(model.backbone, cfg.imagenet_weights)
    return model


def model_inputs(cfg: TrainConfig, batch: dict, device: torch.device) -> torch.Tensor:
    """The model's input on ``device``: uint8 clips for faces, the representation for gestures."""
    if cfg.kind == "facial":
        return batch["x"].to(device, non_blocking=True)
    from datasets.representations import build_representation

    return build_representation(
        batch["joints"].to(device, non_blocking=True),
        batch["lengths"].to(device),
        cfg.representation,
        cfg.rep_size,
        cfg.rep_length,
        weight=cfg.joint_weight,
    )


def forward(cfg: TrainConfig, model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(x)
    return out if isinstance(out, dict) else {"fused": out}


def loss_of(cfg: TrainConfig, outputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    if cfg.kind == "facial":
        from models.tlstm import joint_loss

        return joint_loss(outputs, y, faithful=cfg.faithful_loss)
    return F.cross_entropy(outputs["fused"], y)


class EpochStats:
    """Loss sum and one confusion matrix per head, summable across workers."""

    def __init__(self, heads: tuple[str, ...], num_classes: int):
        self.heads, self.k = heads, num_classes
        self.loss_sum, self.count = 0.0, 0
        self.cms = {h: np.zeros((num_classes, num_classes), np.int64) for h in heads}

    def add(self, loss: float, outputs: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        n = int(y.shape[0])
        self.loss_sum += loss * n
        self.count += n
        yt = y.detach().cpu().numpy()
        for h in self.heads:
            pred = outputs[h].detach().argmax(dim=1).cpu().numpy()
            self.cms[h] += confusion(yt, pred, self.k)

    def all_reduce(self) -> None:
        """Sum over the DDP group (no-op when not distributed)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        flat = np.concatenate(
            [[self.loss_sum, self.count]] + [self.cms[h].ravel() for h in self.heads]
        )
        t = torch.tensor(flat, dtype=torch.float64)
        dist.all_reduce(t)
        v = t.numpy()
        self.loss_sum, self.count = float(v[0]), int(round(v[1]))
        for i, h in enumerate(self.heads):
            block = v[2 + i * self.k**2 : 2 + (i + 1) * self.k**2]
            self.cms[h] = np.rint(block).astype(np.int64).reshape(self.k, self.k)

    def metrics(self, prefix: str, head: str = "fused") -> dict[str, float]:
        """Loss, WAR and UAR of every head, and ``{prefix}_war/uar`` of the predicting ``head``."""
        m = {f"{prefix}_loss": self.loss_sum / max(self.count, 1), f"{prefix}_n": self.count}
        for h in self.heads:
            m[f"{prefix}_{h}_war"] = war(self.cms[h])
            m[f"{prefix}_{h}_uar"] = uar(self.cms[h])
        m[f"{prefix}_war"] = m[f"{prefix}_{head}_war"]
        m[f"{prefix}_uar"] = m[f"{prefix}_{head}_uar"]
        return m


@torch.no_grad()
def predict_probs(cfg: TrainConfig, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities of the configured head (see :func:`head_probs`)."""
    return head_probs(forward(cfg, model, x), cfg.head)


def head_probs(outputs: dict[str, torch.Tensor], head: str) -> torch.Tensor:
    """The predicting head's scores as probabilities.

    ``p1`` already holds probabilities (the mean of per-clip softmaxes). ``p2``, ``p3`` and the
    gesture score are logits. The facial ``fused`` score mixes p1 (probabilities) and p2
    (logits) as the paper does; a softmax makes it a distribution without changing the argmax.
    """
    score = outputs[head]
    return score if head == "p1" else score.softmax(dim=1)


def save_model_checkpoint(
    path_or_buffer,
    model: torch.nn.Module,
    cfg: TrainConfig,
    model_kwargs: dict,
    class_names: list[str],
    preprocessing: dict,
    fold: dict,
    git_commit: str,
    extra: dict | None = None,
) -> None:
    """A self-describing model file: everything needed to rebuild, preprocess and report."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {
        "format": CHECKPOINT_FORMAT,
        "model": cfg.model,
        "model_kwargs": model_kwargs,
        "config": cfg.to_dict(),
        "class_names": list(class_names),
        "preprocessing": preprocessing,
        "fold": fold,
        "seed": cfg.seed,
        "git_commit": git_commit,
        "state_dict": state,
        **(extra or {}),
    }
    torch.save(blob, path_or_buffer)


def load_model_checkpoint(path_or_bytes, device: str | torch.device = "cpu"):
    """(model in eval mode, config, checkpoint dict) from a file written by
    :func:`save_model_checkpoint`; loaded with ``weights_only=True``."""
    from models import build_model

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    blob = torch.load(src, map_location=device, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path_or_bytes if isinstance(path_or_bytes, str) else 'checkpoint'}: "
            f"not an emovis model checkpoint"
        )
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in blob["config"].items() if k in known})
    model = build_model(blob["model"], **blob["model_kwargs"])
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, cfg, blob
