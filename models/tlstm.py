"""The two-stream LSTM head (TLSTM) and the joint three-head loss of Wei et al. (ESWA 2024).

Clip features ``(B, C, F)`` in temporal order go through two streams:

- stream 1 (local spatio-temporal features): LSTM(F -> H1) over the clips, last output ->
  Linear(H1 -> classes) = logits ``p3``;
- stream 2 (clip-level emotion representations): dropout -> Linear(F -> classes) -> softmax per
  clip; ``p1`` = the mean of these probabilities over clips; LSTM(classes -> H2) over the per-clip
  probabilities, last output -> Linear(H2 -> classes) = logits ``p2``.

The prediction is ``fused = w * p1 + (1 - w) * p2`` with ``w = 0.2`` in the paper. As in the
reference, this mixes probabilities (p1) with logits (p2); it is used for its argmax only.
``sum = p1 + p2 + p3`` is the prediction of the reference's "ResNet + TLSTM" baseline script (the
same head on a plain ResNet-18), which adds the three heads instead of fusing p1 and p2; it mixes
probabilities and logits in the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _zero_state(x: Tensor, lstm: nn.LSTM) -> tuple[Tensor, Tensor]:
    """The zero ``(h0, c0)`` that ``nn.LSTM`` assumes when given none, made from ``x`` (B, T, F).

    Passing them explicitly keeps graphs device-agnostic: without them ``nn.LSTM`` creates its
    zeros with ``device=input.device``, which ``torch.export`` and ``torch.jit.trace`` record as
    a constant (the device the model was exported on), so the graph then fails on any other one.
    """
    B = x.shape[0]
    h0 = x.new_zeros(lstm.num_layers, B, lstm.hidden_size)  # (layers, B, H)
    return h0, torch.zeros_like(h0)


class TwoStreamLSTM(nn.Module):
    """TLSTM head: ``forward(features (B, C, F))`` -> dict p1, p2, p3, fused, sum (B, classes) each.

    ``p1`` holds probabilities (mean of per-clip softmaxes); ``p2`` and ``p3`` are logits;
    ``fused = w * p1 + (1 - w) * p2`` (the paper's prediction) and ``sum = p1 + p2 + p3`` (the
    reference's ResNet + TLSTM baseline's prediction) are scores for their argmax.
    """

    def __init__(
        self,
        num_classes: int,
        in_features: int = 512,
        lstm1: int = 1024,
        lstm2: int = 512,
        fusion_weight: float = 0.2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 <= fusion_weight <= 1.0:
            raise ValueError(f"fusion_weight must be in [0, 1], got {fusion_weight}")
        self.fusion_weight = fusion_weight
        self.lstm1 = nn.LSTM(in_features, lstm1, num_layers=1, batch_first=True)
        self.fc3 = nn.Linear(lstm1, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.clip_fc = nn.Linear(in_features, num_classes)
        self.lstm2 = nn.LSTM(num_classes, lstm2, num_layers=1, batch_first=True)
        self.fc2 = nn.Linear(lstm2, num_classes)

    def clip_probabilities(self, features: Tensor) -> Tensor:
        """Per-clip class probabilities of stream 2, ``(B, C, F)`` -> ``(B, C, classes)``: the
        softmaxes whose mean is ``p1`` (dropout applies in training mode only)."""
        return self.clip_fc(self.dropout(features)).softmax(dim=-1)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        if features.dim() != 3:
            raise ValueError(f"expected clip features (B, C, F), got {tuple(features.shape)}")
        seq1, _ = self.lstm1(features, _zero_state(features, self.lstm1))  # (B, C, H1)
        p3 = self.fc3(seq1[:, -1])  # (B, classes)
        clip_probs = self.clip_probabilities(features)  # (B, C, classes)
        p1 = clip_probs.mean(dim=1)  # (B, classes)
        seq2, _ = self.lstm2(clip_probs, _zero_state(clip_probs, self.lstm2))  # (B, C, H2)
        p2 = self.fc2(seq2[:, -1])  # (B, classes)
        fused = self.fusion_weight * p1 + (1.0 - self.fusion_weight) * p2
        return {"p1": p1, "p2": p2, "p3": p3, "fused": fused, "sum": p1 + p2 + p3}


def joint_loss(outputs: dict[str, Tensor], target: Tensor, faithful: bool = True) -> Tensor:
    """The joint loss of the three heads: ``L(p1) + CE(p2) + CE(p3)`` (mean over the batch).

    ``faithful=True`` (default) reproduces the reference: ``p1`` — already probabilities — is fed
    to ``cross_entropy`` as if it were logits, i.e. ``L(p1) = CE(softmax(p1))``; this term is
    bounded and its gradient is weak. ``faithful=False`` uses the proper negative log-likelihood
    of the probabilities, ``NLL(log p1)`` (p1 clamped at 1e-8 before the log).
    """
    p1 = outputs["p1"]
    if faithful:
        loss1 = F.cross_entropy(p1, target)
    else:
        loss1 = F.nll_loss(torch.log(p1.clamp_min(1e-8)), target)
    return loss1 + F.cross_entropy(outputs["p2"], target) + F.cross_entropy(outputs["p3"], target)
