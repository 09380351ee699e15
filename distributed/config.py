"""One frozen training configuration for both branches, with the paper's defaults."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data. Defaults are the paper's (§1.3, §2.5).

    Facial fields: clips (C), frames (K), lstm1 (H1), lstm2 (H2), fusion_weight, dropout,
    imagenet_weights (a torchvision ``resnet18`` .pth), normalize (ImageNet mean/std; off =
    faithful), head (the score that predicts and is scored: "fused" = w·p1 + (1-w)·p2 as in the
    paper, or one head "p1", "p2", "p3"), faithful_loss (the reference's cross-entropy on p1's
    probabilities; off = negative log-likelihood of p1). Gesture fields: representation
    ("timeline", "timeline_single", "potion"), rep_size (S), rep_length (L), joint_weight
    ("index" = j+1, faithful; or "one"), width (W), se_reduction.
    Optimisation: SGD for faces, Adam + StepLR for gestures.
    """

    kind: str = "facial"
    model: str = "sistcm"
    # facial
    clips: int = 5
    frames: int = 2
    lstm1: int = 1024
    lstm2: int = 512
    fusion_weight: float = 0.2
    dropout: float = 0.5
    imagenet_weights: str | None = None
    normalize: bool = False
    head: str = "fused"
    faithful_loss: bool = True
    # gesture
    representation: str = "timeline"
    rep_size: int = 64
    rep_length: int = 300
    joint_weight: str = "index"
    width: int = 128
    se_reduction: int = 16
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    step_size: int = 50
    gamma: float = 0.1
    epochs: int = 400
    batch_size: int = 8
    precise_bn: bool = True  # recompute BatchNorm statistics before validation / saving
    select_metric: str = "uar"  # validation metric that picks the "best" epoch: "uar" or "war"
    seed: int = 0
    amp: bool = True  # mixed precision, used only on GPU

    def __post_init__(self) -> None:
        if self.kind not in ("facial", "gesture"):
            raise ValueError(f"kind must be facial or gesture, got {self.kind!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam, got {self.optimizer!r}")
        heads = ("fused", "p1", "p2", "p3") if self.kind == "facial" else ("fused",)
        if self.head not in heads:
            raise ValueError(f"head must be one of {heads} for {self.kind}, got {self.head!r}")
        if self.select_metric not in ("uar", "war"):
            raise ValueError(f"select_metric must be uar or war, got {self.select_metric!r}")
        for name in ("clips", "frames", "epochs", "batch_size", "rep_size", "rep_length", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def model_kwargs(self, num_classes: int, num_joints: int | None = None) -> dict:
        """Arguments for :func:`models.build_model` (stored in checkpoints)."""
        if self.kind == "facial":
            return {
                "num_classes": num_classes,
                "clips": self.clips,
                "frames": self.frames,
                "lstm1": self.lstm1,
                "lstm2": self.lstm2,
                "fusion_weight": self.fusion_weight,
                "dropout": self.dropout,
                "normalize": self.normalize,
            }
        from datasets.representations import representation_channels

        kwargs = {
            "num_classes": num_classes,
            "in_channels": representation_channels(self.representation, num_joints),
            "width": self.width,
        }
        if self.model == "accm":
            kwargs["se_reduction"] = self.se_reduction
        return kwargs


FACIAL_DEFAULT = TrainConfig()
GESTURE_DEFAULT = TrainConfig(
    kind="gesture",
    model="accm",
    optimizer="adam",
    lr=1e-3,
    weight_decay=0.0,
    epochs=200,
    batch_size=16,
)

SMOKE = {
    "facial": dict(clips=2, frames=2, lstm1=32, lstm2=16, epochs=5, batch_size=4),
    "gesture": dict(rep_size=32, rep_length=48, width=16, se_reduction=4, epochs=3, batch_size=8),
}


def default_config(kind: str, **overrides) -> TrainConfig:
    base = FACIAL_DEFAULT if kind == "facial" else GESTURE_DEFAULT
    return replace(base, **overrides)


def load_overrides(path: str | None) -> dict:
    """Overrides from a JSON or YAML file (keys are :class:`TrainConfig` field names)."""
    if not path:
        return {}
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    return data
