"""Torch-only pieces shared by the Train workers, evaluation and prediction (no Ray here)."""

from __future__ import annotations

import numpy as np
import torch

from branches import DataInfo, get_branch
from distributed.config import TrainConfig
from distributed.metrics import confusion, uar, war


def build(cfg: TrainConfig, data: DataInfo, pretrained: bool = True) -> torch.nn.Module:
    """The model of ``cfg`` for ``data``; with ``pretrained`` it gets the weights ``cfg`` names."""
    branch = get_branch(cfg.branch)
    model = branch.build_model(cfg.model, data)
    if pretrained:
        branch.load_pretrained(cfg.model, model)
    return model


def model_inputs(cfg: TrainConfig, batch: dict, device: torch.device) -> torch.Tensor:
    """The model's input on ``device`` from a collated batch."""
    return get_branch(cfg.branch).inputs(cfg.model, batch, device)


def forward(cfg: TrainConfig, model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's scores as a dict keyed by the branch's heads."""
    return get_branch(cfg.branch).outputs(model(x))


def loss_of(cfg: TrainConfig, outputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return get_branch(cfg.branch).loss(cfg.model, outputs, y)


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
