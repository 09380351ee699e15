"""Facial-expression models of Wei et al. (ESWA 2024): SISTCM + TLSTM, and ResNet + TLSTM.

A :class:`FacialModel` is a frame backbone (clip features) followed by the two-stream LSTM head.
Input: videos ``(B, C, K, 3, S, S)`` — B videos, C clips in temporal order, K frames per clip —
as uint8 or float in [0, 1]. Output: the head's dict ``{"p1", "p2", "p3", "fused", "sum"}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from models.sistcm import (
    FrameResNet,
    resnet18_frames,
    resnet34_frames,
    sistcm_resnet18,
    sistcm_resnet34,
)
from models.tlstm import TwoStreamLSTM


@dataclass(frozen=True)
class FacialConfig:
    """Everything needed to rebuild a facial model (stored on it as ``model.config``)."""

    name: str
    num_classes: int
    clips: int
    frames: int
    lstm1: int = 1024
    lstm2: int = 512
    fusion_weight: float = 0.2
    dropout: float = 0.5
    depth: int = 18
    normalize: bool = False

    def to_dict(self) -> dict:
        """Plain dict, for checkpoints."""
        return asdict(self)


class FacialModel(nn.Module):
    """Backbone (clip features) + TLSTM head.

    ``config`` records how the model was built; ``forward`` accepts any C and K, read from the
    input's shape.
    """

    def __init__(self, backbone: FrameResNet, head: TwoStreamLSTM, config: FacialConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.num_classes = config.num_classes

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C, K, 3, S, S)`` -> clip features ``(B, C, 512)``."""
        b, c = x.shape[:2]
        return self.backbone(x).view(b, c, -1)  # (B, C, 512)

    def forward_head(self, features: Tensor) -> dict[str, Tensor]:
        """Clip features ``(B, C, 512)`` -> ``{"p1", "p2", "p3", "fused", "sum"}``."""
        return self.head(features)

    def clip_probabilities(self, features: Tensor) -> Tensor:
        """Clip features ``(B, C, 512)`` -> the clip stream's per-clip probabilities
        ``(B, C, classes)`` (their mean over clips is ``p1``)."""
        return self.head.clip_probabilities(features)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_head(self.forward_features(x))


def _facial(config: FacialConfig, super_image: bool) -> FacialModel:
    factories = {
        (True, 18): sistcm_resnet18,
        (True, 34): sistcm_resnet34,
        (False, 18): resnet18_frames,
        (False, 34): resnet34_frames,
    }
    key = (super_image, config.depth)
    if key not in factories:
        raise ValueError(f"depth must be 18 or 34, got {config.depth}")
    if config.clips < 1 or config.frames < 1:
        raise ValueError(f"clips and frames must be >= 1, got {config.clips}, {config.frames}")
    backbone = factories[key](normalize=config.normalize)
    head = TwoStreamLSTM(
        config.num_classes,
        in_features=backbone.num_features,
        lstm1=config.lstm1,
        lstm2=config.lstm2,
        fusion_weight=config.fusion_weight,
        dropout=config.dropout,
    )
    return FacialModel(backbone, head, config)


def sistcm(
    num_classes: int,
    clips: int = 5,
    frames: int = 2,
    lstm1: int = 1024,
    lstm2: int = 512,
    fusion_weight: float = 0.2,
    dropout: float = 0.5,
    depth: int = 18,
    normalize: bool = False,
) -> FacialModel:
    """SISTCM + TLSTM (Wei et al., "Learning facial expression and body gesture visual
    information for video emotion recognition", ESWA 237, 2024). Paper: C = 5 clips, K = 2."""
    config = FacialConfig(
        "sistcm", num_classes, clips, frames, lstm1, lstm2, fusion_weight, dropout, depth, normalize
    )
    return _facial(config, super_image=True)


def resnet_tlstm(
    num_classes: int,
    clips: int = 5,
    frames: int = 3,
    lstm1: int = 1024,
    lstm2: int = 512,
    fusion_weight: float = 0.2,
    dropout: float = 0.5,
    depth: int = 18,
    normalize: bool = False,
) -> FacialModel:
    """The "ResNet + TLSTM" baseline of Wei et al. (ESWA 2024): plain 2D ResNet per frame, frames
    of a clip averaged, same TLSTM head. The paper's baseline uses K = 3 frames per clip."""
    config = FacialConfig(
        "resnet_tlstm",
        num_classes,
        clips,
        frames,
        lstm1,
        lstm2,
        fusion_weight,
        dropout,
        depth,
        normalize,
    )
    return _facial(config, super_image=False)
