"""Prediction on new inputs with a trained checkpoint, in this process, without Ray.

The checkpoint says which branch it belongs to and how its training data was preprocessed;
:class:`Predictor` redoes exactly that preprocessing with the branch's own per-item function
(the one the shard job ran), turns the result into a shard row, and scores it through the same
evaluation collate and head as ``distributed.evaluate``. Predicting a shard's source file
therefore equals evaluating its row, by construction.

    p = Predictor.from_checkpoint("model.pt")
    p.predict_path("clip.avi").label
    p.predict_frames(frames_uint8_nhw3)  # faces; p.predict_joints(joints_tjd) for bodies
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import torch

from branches.base import numpy_batch
from datasets import storage
from datasets.video import video_fps
from distributed.inference.evaluation import probabilities
from distributed.training.checkpoint import ModelFile, load_model


@dataclass(frozen=True)
class Prediction:
    """What the model says about one item; ``extras``: what its branch adds about the input
    (the facial branch: ``face_fraction``, the share of frames where a face was found)."""

    source: str
    label: str
    probabilities: dict[str, float]
    timeline: tuple = ()
    extras: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    n_frames: int = 0

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (the branch's extras at the top level)."""
        out = asdict(self)
        out.update(out.pop("extras"))
        return out


@dataclass(frozen=True)
class Prepared:
    """An item after the deterministic preprocessing, before the model: a one-row Arrow table
    of the branch's shard schema, plus what the container said (fps) and any warnings."""

    source: str
    table: pa.Table
    fps: float | None = None
    extras: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_ipc(self) -> bytes:
        """The table as Arrow IPC bytes (how a prepared item travels between Ray tasks)."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as w:
            w.write_table(self.table)
        return sink.getvalue().to_pybytes()

    @staticmethod
    def table_from_ipc(data: bytes) -> pa.Table:
        return pa.ipc.open_stream(pa.BufferReader(data)).read_all()


def prepared(branch, data, source: str, row, fps: float | None = None) -> Prepared:
    """A preprocessed row as a :class:`Prepared` item (its one-row table and warnings)."""
    return Prepared(
        source, branch.table([row]), fps, branch.prediction_extras(row), branch.warnings(row, data)
    )


def prepare_path(branch, data, path: str, context=None) -> Prepared:
    """Preprocess one input exactly as the shard job did (raises BadInput)."""
    row = branch.prepare(str(path), data, context)
    return prepared(branch, data, str(path), row, video_fps(str(path)))


class Predictor:
    """A loaded checkpoint plus the preprocessing it was trained with. No Ray involved."""

    def __init__(self, model_file: ModelFile, device: str = "cpu", clips: int | None = None):
        self.mf = model_file
        self.branch = model_file.branch
        self.cfg = model_file.config
        self.data = model_file.data
        self.device = torch.device(device)
        self.class_names = list(model_file.classes)
        self.timeline_clips = int(clips) if clips else getattr(self.cfg.model, "clips", None)
        self._context = None

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu", clips: int | None = None) -> Predictor:
        """Load a model file written by train/tune (a path, URI or the file's bytes)."""
        data = path if isinstance(path, bytes) else storage.read_bytes(str(path))
        name = None if isinstance(path, bytes) else str(path)
        return cls(load_model(data, device, name=name), device, clips)

    def with_options(self, **options) -> Predictor:
        """The same model with other preprocessing options (to see what they change)."""
        data = replace(self.data, options={**self.data.options, **options})
        return Predictor(replace(self.mf, data=data), str(self.device), self.timeline_clips)

    @property
    def context(self):
        """The per-item processing state (a face detector, ...), built once."""
        if self._context is None:
            self._context = self.branch.worker_context(
                self.branch.options_type(**self.data.options)
            )
        return self._context

    # ------------------------------------------------------------ preparation
    def _prepared(self, source: str, row) -> Prepared:
        return prepared(self.branch, self.data, source, row)

    def prepare_path(self, path: str) -> Prepared:
        """Preprocess one input exactly as the shard job did (raises BadInput)."""
        return prepare_path(self.branch, self.data, path, self.context)

    def prepare_frames(self, frames: np.ndarray, already_cropped: bool = False) -> Prepared:
        """(n, H, W, 3) uint8 RGB frames -> face crops (tracked here unless already cropped)."""
        if not hasattr(self.branch, "row_from_frames"):
            raise ValueError("predict_frames needs a facial checkpoint; use predict_joints")
        row = self.branch.row_from_frames(frames, self.data, self.context, already_cropped)
        prep = self._prepared("<array>", row)
        return replace(prep, extras={}, warnings=()) if already_cropped else prep

    def prepare_joints(self, joints: np.ndarray) -> Prepared:
        """(T, J, D) joints, NaN where missing -> a row as the shard job stores it."""
        if not hasattr(self.branch, "row_from_joints"):
            raise ValueError("predict_joints needs a gesture checkpoint; use predict_frames")
        return self._prepared("<array>", self.branch.row_from_joints(joints, self.data))

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_tables(self, items: list[Prepared]) -> list[Prediction]:
        """One batched forward pass over prepared items, through the evaluation collate."""
        if not items:
            return []
        table = pa.concat_tables([it.table for it in items])
        batch = numpy_batch(table, self.branch.columns)
        _, probs = probabilities(self.mf, batch, self.device)
        out = []
        for i, (it, p) in enumerate(zip(items, probs)):
            timeline = self.branch.timeline(
                self.cfg.model,
                self.mf.model,
                batch,
                i,
                self.timeline_clips,
                it.fps,
                self.class_names,
            )
            out.append(
                Prediction(
                    source=it.source,
                    label=self.class_names[int(np.argmax(p))],
                    probabilities=dict(zip(self.class_names, (float(v) for v in p))),
                    timeline=timeline,
                    extras=dict(it.extras),
                    warnings=tuple(it.warnings),
                    n_frames=int(batch["n_frames"][i]),
                )
            )
        return out

    # ------------------------------------------------------------ convenience
    def predict_path(self, path: str) -> Prediction:
        """Preprocess and predict one file or folder (raises BadInput when it cannot be read)."""
        return self.predict_tables([self.prepare_path(path)])[0]

    def predict_frames(self, frames: np.ndarray, already_cropped: bool = False) -> Prediction:
        """Predict from (n, H, W, 3) uint8 RGB frames (facial checkpoints)."""
        return self.predict_tables([self.prepare_frames(frames, already_cropped)])[0]

    def predict_joints(self, joints: np.ndarray) -> Prediction:
        """Predict from (T, J, D) joints with NaN for missing ones (gesture checkpoints)."""
        return self.predict_tables([self.prepare_joints(joints)])[0]
