"""The body-gesture branch: joint sequences -> trajectory images -> ACCM (or the CNN baseline).

Shard rows hold each sequence's filled joints (``datasets.GestureRow``); the image-like
representation (Wei et al. 2024: with a timeline, single map, or PoTion-like without one) is
built on the worker's device from the stored joints, so its size S and length L are free
parameters of training and of the search, not of preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from branches.base import Branch, DataInfo, Demo, check_allowed, check_field_types
from branches.gesture.data import (
    JOINT_EXTENSIONS,
    GestureOptions,
    gesture_arrays,
    gesture_table,
    process_gesture_item,
)
from datasets.records import BadInput, SourceItem
from datasets.representations import host_check

HEADS = ("fused",)


@dataclass(frozen=True)
class GestureModelConfig:
    """The gesture model and its input representation. Defaults are the paper's.

    name: "accm" or "cnn"; representation: "timeline" (2J, S, L), "timeline_single" (2, S, L) or
    "potion" (J, S, S); rep_size S, rep_length L; joint_weight: "index" (w_j = j + 1, faithful) or
    "one"; width W of the network and se_reduction of ACCM's squeeze-excitation; head: the one
    score ("fused", the network's logits); normalise: per-frame joint normalisation,
    "reference" (integer coordinates and a 5-unit border on each side, as the paper's code) or
    "fit" (float coordinates, (S - 5) / range); faithful_loss: for the CNN baseline, the
    reference's cross-entropy on its softmax output (off: on the logits). ACCM's loss is always
    the cross-entropy on its logits, as in the reference.
    """

    name: str = "accm"
    representation: str = "timeline"
    rep_size: int = 64
    rep_length: int = 300
    joint_weight: str = "index"
    width: int = 128
    se_reduction: int = 16
    head: str = "fused"
    normalise: str = "reference"
    faithful_loss: bool = True

    def __post_init__(self) -> None:
        from datasets.representations import KINDS, WEIGHTS

        check_field_types(self)
        if self.name not in GestureBranch.models:
            raise ValueError(f"model must be one of {GestureBranch.models}, got {self.name!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.representation not in KINDS:
            raise ValueError(f"representation must be one of {KINDS}, got {self.representation!r}")
        if self.normalise not in ("reference", "fit"):
            raise ValueError(f"normalise must be reference or fit, got {self.normalise!r}")
        if self.joint_weight not in WEIGHTS:
            raise ValueError(f"joint_weight must be one of {WEIGHTS}, got {self.joint_weight!r}")
        for key in ("rep_size", "rep_length", "width", "se_reduction"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


class GestureCollate:
    """numpy batch -> {"joints": (B, Tmax, J, 2) float32 zero-padded, "lengths", "y"}."""

    def __init__(self, forbidden: frozenset[str] = frozenset()):
        self.forbidden = forbidden

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        check_allowed(batch["id"], self.forbidden)
        seqs = [
            gesture_arrays(j, c, t, nj, d)[0][..., :2]  # (T, J, 2): x, y only
            for j, c, t, nj, d in zip(
                batch["joints"],
                batch["confidence"],
                batch["n_frames"],
                batch["n_joints"],
                batch["dims"],
            )
        ]
        joints = {s.shape[1] for s in seqs}
        if len(joints) != 1:
            raise ValueError(f"a batch mixes joint counts {sorted(joints)}; one layout per dataset")
        lengths = np.array([s.shape[0] for s in seqs], np.int64)
        padded = np.zeros((len(seqs), lengths.max(), seqs[0].shape[1], 2), np.float32)
        for i, s in enumerate(seqs):
            padded[i, : s.shape[0]] = s
        return {
            "joints": torch.from_numpy(padded),
            "lengths": torch.from_numpy(lengths),
            "y": torch.as_tensor(batch["label"].astype(np.int64)),
            # checked here, on the feed's thread: the device builds the maps without read-backs
            "all_finite": host_check(padded, lengths),
        }


class GestureBranch(Branch):
    name = "gesture"
    description = "body gestures from joint tracks (trajectory images + ACCM)"
    config_type = GestureModelConfig
    models = ("accm", "cnn")
    heads = HEADS
    export_names = ("logits",)  # the one score is the network's logits
    columns = ("id", "label", "n_frames", "n_joints", "dims", "joints", "confidence")
    options_type = GestureOptions
    reads_video = False
    source_extensions = JOINT_EXTENSIONS
    train_defaults = dict(
        optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0, epochs=200, batch_size=16
    )
    smoke = dict(rep_size=32, rep_length=48, width=16, se_reduction=4, epochs=3, batch_size=8)
    space = {
        "representation": {"choice": ["timeline", "timeline_single", "potion"]},
        "rep_size": {"choice": [32, 48, 64]},
        "rep_length": {"choice": [64, 150, 300]},
        "width": {"choice": [32, 64, 128]},
        "se_reduction": {"choice": [4, 8, 16]},
        "lr": {"loguniform": [1e-4, 1e-2]},
    }
    start = [
        {
            "representation": "timeline",
            "rep_size": 64,
            "rep_length": 300,
            "width": 128,
            "se_reduction": 16,
            "lr": 1e-3,
        }
    ]
    smoke_space = {
        "representation": {"choice": ["timeline", "potion"]},
        "width": {"choice": [8, 16]},
        "lr": {"loguniform": [1e-3, 3e-2]},
    }
    smoke_start = [{"representation": "timeline", "width": 16, "lr": 1e-2}]

    def extensions(self, options: GestureOptions) -> tuple[str, ...]:
        if options.pose:  # pose estimation reads videos and image sequences
            from datasets.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

            return tuple(VIDEO_EXTENSIONS) + tuple(IMAGE_EXTENSIONS)
        return self.source_extensions

    def check_options(self, options: GestureOptions) -> None:
        if options.pose == "mediapipe":
            from datasets.pose import require_mediapipe

            require_mediapipe()

    @property
    def demo(self) -> Demo:
        from datasets.synthetic_gesture import write_gesture_set

        return Demo(6, 4, write_gesture_set)

    # ------------------------------------------------------------ preprocessing
    def process_item(
        self, item: SourceItem, label: int, options: GestureOptions, context, notes=None
    ):
        return process_gesture_item(item, label, options)

    def table(self, rows):
        return gesture_table(rows)

    def fold_columns(self):
        return ("id", "subject", "label", "n_joints")

    def manifest_extra(self, table):
        counts = set(table["n_joints"].to_pylist())
        if len(counts) != 1:
            raise BadInput(
                "(shards)",
                f"joint files with different joint counts {sorted(counts)}: "
                "preprocess one joint layout per shard folder",
            )
        return {"num_joints": counts.pop()}

    # ------------------------------------------------------------ training
    def collate(self, cfg, *, train, seed, epoch, forbidden=frozenset()):
        return GestureCollate(forbidden)

    def inputs(self, cfg: GestureModelConfig, batch, device):
        from datasets.representations import build_representation

        return build_representation(
            batch["joints"],
            batch["lengths"],
            cfg.representation,
            cfg.rep_size,
            cfg.rep_length,
            weight=cfg.joint_weight,
            normalise=cfg.normalise,
            device=device,
            all_finite=batch.get("all_finite"),  # set by GestureCollate's host-side check
        )

    def in_channels(self, cfg: GestureModelConfig, data: DataInfo) -> int:
        from datasets.representations import representation_channels

        if data.num_joints is None:
            raise ValueError("gesture data must say how many joints a frame has")
        return representation_channels(cfg.representation, data.num_joints)

    def build_model(self, cfg: GestureModelConfig, data: DataInfo):
        from models import build_model

        kwargs = dict(
            num_classes=data.num_classes, in_channels=self.in_channels(cfg, data), width=cfg.width
        )
        if cfg.name == "accm":
            kwargs["se_reduction"] = cfg.se_reduction
        return build_model(cfg.name, **kwargs)

    def outputs(self, raw):
        return {"fused": raw}

    def loss(self, cfg: GestureModelConfig, outputs, y):
        logits = outputs["fused"]
        if cfg.name == "cnn" and cfg.faithful_loss:
            # the reference CNN ends in a softmax and its loss is CE on those probabilities
            return F.cross_entropy(logits.softmax(dim=1), y)
        return F.cross_entropy(logits, y)

    # ------------------------------------------------------------ use
    def example_input(self, cfg: GestureModelConfig, data: DataInfo, batch: int):
        g = torch.Generator().manual_seed(0)
        s, length = cfg.rep_size, cfg.rep_length
        shape = (s, s) if cfg.representation == "potion" else (s, length)
        return torch.rand((batch, self.in_channels(cfg, data), *shape), generator=g)

    def prepare(self, path, data: DataInfo, context=None):
        item = SourceItem(id=str(path), subject="", label="", path=str(path))
        return process_gesture_item(item, 0, self.options_type(**data.options))

    def row_from_joints(self, joints, data: DataInfo):
        """A row from (T, J, D) joints with NaN where missing, as the shard job stores it."""
        from branches.gesture.data import gesture_row
        from datasets.records import JointSequence

        joints = np.asarray(joints, np.float32)
        conf = np.isfinite(joints).all(axis=-1).astype(np.float32)  # (T, J)
        seq = JointSequence(joints, conf, "<array>", "array")
        item = SourceItem(id="<array>", subject="", label="", path="<array>")
        return gesture_row(item, 0, seq, self.options_type(**data.options))

    def is_item_dir(self, path) -> bool:
        from pathlib import Path

        from datasets.video import list_images

        # an OpenPose folder (one JSON per frame), or frames to estimate poses on
        return any(Path(path).glob("*_keypoints.json")) or bool(list_images(path))


GESTURE = GestureBranch()
