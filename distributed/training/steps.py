"""Torch-only pieces shared by the Train workers, evaluation and prediction (no Ray here)."""

from __future__ import annotations

import numpy as np
import torch

from branches import DataInfo, get_branch
from distributed.core.config import TrainConfig
from distributed.results.metrics import uar, war


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
    """Loss sum and one confusion matrix per head, kept on the model's device and summed over the
    workers once per epoch.

    Nothing here waits for the device during an epoch: the loss is summed as a tensor and each
    head's predictions go into a confusion matrix on the device (``index_add_``). The one
    host-device sync is :meth:`all_reduce` (or :meth:`metrics`) at the end of the epoch, and the
    tensor handed to the collective lives on ``device`` (NCCL has no CPU tensors).
    """

    def __init__(self, heads: tuple[str, ...], num_classes: int, device="cpu"):
        self.heads, self.k = heads, num_classes
        self.device = torch.device(device)
        self.count = 0
        self._loss = torch.zeros((), dtype=torch.float64, device=self.device)
        # (heads, K*K) counts; float64 so that one tensor carries everything through all_reduce
        self._cms = torch.zeros(
            (len(heads), num_classes**2), dtype=torch.float64, device=self.device
        )
        self._host = None  # (loss_sum, cms) read back once

    def add(self, loss: torch.Tensor | float, outputs: dict[str, torch.Tensor], y: torch.Tensor):
        n = int(y.shape[0])
        self.count += n
        self._loss += torch.as_tensor(loss, device=self.device).detach().double() * n
        y = y.to(self.device)
        ones = torch.ones(n, dtype=torch.float64, device=self.device)
        for i, h in enumerate(self.heads):
            pred = outputs[h].detach().argmax(dim=1).to(self.device)
            # index_add_ into the fixed-size matrix: bincount would read the max back first
            self._cms[i].index_add_(0, y * self.k + pred, ones)
        self._host = None

    def all_reduce(self) -> None:
        """Sum over the process group (no-op without one): one collective of one tensor on this
        worker's device (also in a group of one, so that path is the same for every size)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        flat = torch.cat(
            [
                torch.stack([self._loss, torch.tensor(float(self.count), **self._like())]),
                self._cms.ravel(),
            ]
        )
        dist.all_reduce(flat)
        self._loss = flat[0].clone()
        self.count = int(round(float(flat[1])))
        self._cms = flat[2:].reshape(len(self.heads), self.k**2).clone()
        self._host = None

    def _like(self) -> dict:
        return {"dtype": torch.float64, "device": self.device}

    def _read(self):
        if self._host is None:
            loss = float(self._loss)  # the epoch's one host-device sync
            cms = np.rint(self._cms.cpu().numpy()).astype(np.int64)
            self._host = (
                loss,
                {h: cms[i].reshape(self.k, self.k) for i, h in enumerate(self.heads)},
            )
        return self._host

    @property
    def loss_sum(self) -> float:
        return self._read()[0]

    @property
    def cms(self) -> dict[str, np.ndarray]:
        """Each head's confusion matrix (rows = true class) on the host."""
        return self._read()[1]

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
