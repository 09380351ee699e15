"""Pure torch models of Wei et al. (ESWA 2024): SISTCM + TLSTM for faces, ACCM for body gestures.

One public entry point, :func:`build_model`, backed by a plain dict of factories.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from models.accm import accm, cnn
from models.facial import resnet_tlstm, sistcm

MODELS: dict[str, Callable[..., nn.Module]] = {
    "sistcm": sistcm,
    "resnet_tlstm": resnet_tlstm,
    "accm": accm,
    "cnn": cnn,
}


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by name ("sistcm", "resnet_tlstm", "accm", "cnn").

    Facial models take ``clips``, ``frames``, ``lstm1``, ``lstm2``, ``fusion_weight``, ``dropout``,
    ``depth``, ``normalize``;
    gesture models take ``in_channels``, ``width`` (and ``se_reduction`` for ACCM).
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return factory(num_classes=num_classes, **kwargs)


__all__ = ["MODELS", "build_model"]
