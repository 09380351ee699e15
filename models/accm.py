"""Body-gesture models of Wei et al. (ESWA 2024, §2.5): ACCM and the plain two-layer CNN baseline.

Input: joint-trajectory maps ``(B, Cin, H, W)`` (the "timeline" representation: Cin = 2J, H = S,
W = L). Output: logits ``(B, num_classes)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class GestureConfig:
    """Everything needed to rebuild a gesture model (stored on it as ``model.config``)."""

    name: str
    num_classes: int
    in_channels: int
    width: int = 128
    se_reduction: int = 16

    def to_dict(self) -> dict:
        """Plain dict, for checkpoints."""
        return asdict(self)


# ---------------------------------------------------------------- layers
class SqueezeExcite(nn.Module):
    """Channel attention: global average pool -> Linear(C -> C/r) -> ReLU -> Linear -> sigmoid.

    As in the paper (fully connected layers with biases, ReLU, sigmoid gate). One departure: the
    hidden width is ``max(1, channels // reduction)`` instead of exactly C/16, so that narrow
    models (C < r or C not divisible by r) still build.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        B, C, _, _ = x.shape
        s = x.mean(dim=(2, 3))  # (B, C)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))  # (B, C)
        return x * s.view(B, C, 1, 1)  # (B, C, H, W)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias: BN follows) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


# ---------------------------------------------------------------- blocks
class AttentionBranch(nn.Module):
    """ACCM branch 2: depth-wise 3x3 -> 3x3/2 conv-BN-ReLU -> squeeze-excite -> 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, width: int, se_reduction: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
        self.conv1 = conv_bn_relu(cin, width, stride=2)
        self.se = SqueezeExcite(width, se_reduction)
        self.conv2 = conv_bn_relu(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.se(self.conv1(self.depthwise(x))))


# ---------------------------------------------------------------- model
class GestureNet(nn.Module):
    """Branch 1 (two conv-BN-ReLU, the first with stride 2), optionally + the attention branch,
    summed -> global average pool -> Linear(width -> classes).

    With ``attention`` this is ACCM; without it, the plain CNN baseline.
    """

    def __init__(self, config: GestureConfig, attention: bool) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        w = config.width
        self.plain = nn.Sequential(
            conv_bn_relu(config.in_channels, w, stride=2), conv_bn_relu(w, w)
        )
        self.attention = (
            AttentionBranch(config.in_channels, w, config.se_reduction) if attention else None
        )
        self.fc = nn.Linear(w, config.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, Cin, H, W) -> feature maps (B, width, ceil(H/2), ceil(W/2))."""
        y = self.plain(x)
        if self.attention is not None:
            y = y + self.attention(x)
        return y

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Feature maps (B, width, h, w) -> logits (B, classes), or pooled features (B, width)."""
        x = x.mean(dim=(2, 3))  # (B, width)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _build(name: str, num_classes: int, in_channels: int, width: int, se_reduction: int):
    config = GestureConfig(name, num_classes, in_channels, width, se_reduction)
    return GestureNet(config, attention=name == "accm")


# ---------------------------------------------------------------- factories
def accm(
    num_classes: int, in_channels: int, width: int = 128, se_reduction: int = 16
) -> GestureNet:
    """ACCM, the attention-based channel-wise convolutional model of Wei et al., "Learning Facial
    Expression and Body Gesture Visual Information for Video Emotion Recognition", ESWA 2024."""
    return _build("accm", num_classes, in_channels, width, se_reduction)


def cnn(num_classes: int, in_channels: int, width: int = 128) -> GestureNet:
    """The plain two-layer CNN baseline of Wei et al. (ESWA 2024): ACCM without branch 2."""
    return _build("cnn", num_classes, in_channels, width, se_reduction=16)


__all__ = ["GestureConfig", "GestureNet", "SqueezeExcite", "accm", "cnn"]
