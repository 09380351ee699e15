"""What a branch (a modality: faces, bodies, ...) must provide to the rest of the system.

Everything that differs by modality lives in the branch's own module (``branches/facial/``,
``branches/gesture/``): the shard rows it writes and the columns training reads, the
preprocessing options and the per-item processing, the typed model configuration with its
defaults, smoke settings and search space, the train/eval collate, the model's inputs, loss and
heads, the example input for export, and what prediction must redo. The rest of the code
(preprocessing job, training, search, evaluation, prediction, export) is written once against
this interface. No Ray here: collates are plain callables that Ray wraps at its edge.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch

from datasets.records import SourceItem


class ForbiddenRowError(RuntimeError):
    """A row that must not be read here (an outer test row during the search) was read."""


def check_allowed(ids: Iterable[str], forbidden: frozenset[str]) -> None:
    """Raise when a batch holds a held-out row (the guard every training batch passes)."""
    if forbidden:
        bad = sorted(set(map(str, ids)) & forbidden)
        if bad:
            raise ForbiddenRowError(f"rows {bad[:5]} of a held-out test fold reached training code")


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data: classes, joints per frame (bodies) and the
    preprocessing options the shards were written with (recorded in every checkpoint)."""

    classes: tuple[str, ...]
    options: dict
    num_joints: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict:
        return {
            "classes": list(self.classes),
            "options": dict(self.options),
            "num_joints": self.num_joints,
        }

    @classmethod
    def from_json(cls, obj: dict) -> DataInfo:
        return cls(tuple(obj["classes"]), dict(obj["options"]), obj.get("num_joints"))


@dataclass(frozen=True)
class Demo:
    """The synthetic demo set of a branch: how to write it and how to preprocess it."""

    subjects: int
    per_class: int
    write: Callable  # write(root, n_subjects=..., per_class=..., seed=...)
    preprocess_args: tuple[str, ...] = ()
    smoke_preprocess_args: tuple[str, ...] = ()


def check_field_types(config) -> None:
    """Each field of a frozen config dataclass holds a value of its declared type: an ``int``
    field a whole number (not a bool), a ``float`` field a finite real number, a ``bool`` field
    True or False, a ``str`` field a string (``str | None``: or None); numbers are stored as
    Python ``int`` / ``float`` (numpy's too). ValueError naming the field and the value
    otherwise. Fields of other types are left to the config's own checks."""
    for f in fields(config):
        value = getattr(config, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind in ("int", "float"):
            number = numbers.Integral if kind == "int" else numbers.Real
            ok = isinstance(value, number) and not isinstance(value, (bool, np.bool_))
            ok = ok and math.isfinite(value)
            what = "a whole number" if kind == "int" else "a finite number"
            if ok:
                object.__setattr__(config, f.name, int(value) if kind == "int" else float(value))
        elif kind == "bool":
            ok, what = isinstance(value, bool), "true or false"
        elif kind in ("str", "str | None"):
            ok = isinstance(value, str) or (value is None and kind != "str")
            what = "a string" if kind == "str" else "a string or null"
        else:
            continue
        if not ok:
            raise ValueError(f"{f.name} must be {what}, got {value!r}")


class Branch(ABC):
    """One modality. Subclasses set the class attributes and implement the methods."""

    name: str  # the CLI word and the manifest's ``kind``
    description: str
    config_type: type  # frozen dataclass of the model/data configuration (field ``name``)
    models: tuple[str, ...]  # model names of models.build_model this branch trains
    heads: tuple[str, ...]  # score names the model's output dict holds

    @property
    def export_names(self) -> tuple[str, ...]:
        """Names of the heads' raw scores in an exported graph (after ``probs``)."""
        return self.heads

    columns: tuple[str, ...]  # shard columns training and evaluation read
    options_type: type  # frozen dataclass of the per-item preprocessing options
    source_extensions: tuple[str, ...]  # file types a source folder item may have
    reads_video: bool  # items are videos / image sequences (the CK+ layout needs this)
    train_defaults: dict  # optimisation defaults (TrainConfig fields) of the paper
    model_defaults: dict = {}  # model name -> flat defaults that differ (the published baselines)
    smoke: dict  # flat overrides of a smoke run (a tiny model, a few epochs)
    space: dict  # search space (see distributed.search.space)
    start: list  # points evaluated first (the paper's)
    smoke_space: dict
    smoke_start: list
    demo: Demo

    # ------------------------------------------------------------ preprocessing
    def extensions(self, options) -> tuple[str, ...]:
        """File types a source item may have with these preprocessing options."""
        return self.source_extensions

    def check_options(self, options) -> None:
        """Refuse options this machine cannot run (an optional package missing), before any
        work starts; the error says how to install what is missing."""
        return None

    def worker_context(self, options):
        """Per-task state of the per-item processing (a face detector, ...) or None."""
        return None

    @abstractmethod
    def process_item(self, item: SourceItem, label: int, options, context, notes=None):
        """One source item -> one shard row (raises ``BadInput``); notes for the user (e.g.
        dropped frames) are appended to ``notes``."""

    @abstractmethod
    def table(self, rows) -> pa.Table:
        """Shard rows -> an Arrow table of the branch's schema."""

    def manifest_extra(self, table: pa.Table) -> dict:
        """Branch-specific manifest fields computed from the written rows (e.g. joint counts)."""
        return {}

    def fold_columns(self) -> tuple[str, ...]:
        """Columns the manifest step reads from the written shards."""
        return ("id", "subject", "label")

    # ------------------------------------------------------------ training
    @abstractmethod
    def collate(
        self, cfg, *, train: bool, seed: int, epoch: int, forbidden: frozenset[str] = frozenset()
    ) -> Callable:
        """numpy batch of shard columns -> dict of tensors (plain callable, no Ray)."""

    @abstractmethod
    def inputs(self, cfg, batch: dict, device: torch.device) -> torch.Tensor:
        """The model's input on ``device`` from a collated batch."""

    @abstractmethod
    def build_model(self, cfg, data: DataInfo) -> torch.nn.Module:
        """The model of ``cfg`` (the branch's typed config) for ``data``."""

    def outputs(self, raw) -> dict[str, torch.Tensor]:
        """The model's output as a dict of scores keyed by :attr:`heads`."""
        return raw

    @abstractmethod
    def loss(self, cfg, outputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Training loss of one batch."""

    def load_pretrained(self, cfg, model: torch.nn.Module) -> None:
        """Load pretrained weights named by ``cfg`` (nothing by default)."""
        return None

    # ------------------------------------------------------------ use
    @abstractmethod
    def example_input(self, cfg, data: DataInfo, batch: int) -> torch.Tensor:
        """A random input of the model's shape (export)."""

    @abstractmethod
    def prepare(self, path: str, data: DataInfo, context=None):
        """One new input file or folder -> a shard row, exactly as the shard job made it."""

    def timeline(self, cfg, model, batch: dict, i: int, clips, fps, classes) -> tuple:
        """Per-segment probabilities over time of item ``i`` of a numpy batch of shard columns,
        for prediction (empty when the branch has none)."""
        return ()

    def prediction_extras(self, row) -> dict:
        """What a prediction reports about its input besides the scores (JSON values, e.g. the
        share of frames where a face was found); none by default."""
        return {}

    def warnings(self, row, data: DataInfo) -> tuple[str, ...]:
        """What a user should know about a prepared item (e.g. no face found)."""
        return ()

    def is_item_dir(self, path) -> bool:
        """Whether a folder is one item (an image sequence, an OpenPose folder, ...)."""
        return False


def numpy_batch(table: pa.Table, columns: Iterable[str]) -> dict[str, np.ndarray]:
    """An Arrow table as a numpy batch, column by column, like a Ray Data numpy batch."""
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}
