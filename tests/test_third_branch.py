"""A third modality defined entirely in this file, run through every command unchanged.

The "intensity" branch reads a video (or image sequence) as one number per frame, its mean
brightness, and classifies the sequence with a tiny 1-D convolutional network. Its classes are
"brightening" and "darkening": the same frames in opposite order, so the clip's mean brightness
is the same for both and only the order over time tells them apart (a signal only a model of
the sequence can learn). The branch is named by its import path (``MODULE:NAME``), so
preprocessing's Ray tasks, training, evaluation and prediction all find it by importing this
module: nothing outside this file knows it exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from branches.base import Branch, DataInfo, Demo, check_allowed
from datasets.records import SourceItem

NAME = "tests.test_third_branch:INTENSITY"
CLASSES = ("brightening", "darkening")
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class IntensityConfig:
    """The model and its input: ``length`` resampled time steps, ``width`` channels."""

    name: str = "conv1d"
    length: int = 16
    width: int = 8
    head: str = "fused"


@dataclass(frozen=True)
class IntensityOptions:
    max_frames: int = 64


@dataclass(frozen=True)
class IntensityRow:
    id: str
    subject: str
    label: int
    label_name: str
    n_frames: int
    signal: list
    source: str


def _signal(path: str, options: IntensityOptions) -> np.ndarray:
    from datasets.video import read_frames

    frames = read_frames(path, options.max_frames)
    return frames.reshape(len(frames), -1).mean(axis=1).astype(np.float32) / 255.0


class Conv1dNet(nn.Module):
    def __init__(self, classes: int, width: int):
        super().__init__()
        self.conv = nn.Conv1d(1, width, kernel_size=3, padding=1)
        self.head = nn.Linear(width * 2, classes)

    def forward(self, x):  # (B, L)
        h = F.relu(self.conv(x[:, None] - x.mean(dim=1, keepdim=True)[:, None]))
        half = h.shape[-1] // 2  # the first and the second half of the clip, pooled
        return self.head(torch.cat([h[..., :half].mean(-1), h[..., half:].mean(-1)], dim=1))


def _resample(signal: np.ndarray, length: int) -> np.ndarray:
    t = np.linspace(0, len(signal) - 1, length)
    return np.interp(t, np.arange(len(signal)), signal).astype(np.float32)


class IntensityBranch(Branch):
    name = NAME
    description = "mean frame brightness over time (a test of the branch interface)"
    config_type = IntensityConfig
    models = ("conv1d",)
    heads = ("fused",)
    columns = ("id", "label", "n_frames", "signal")
    options_type = IntensityOptions
    source_extensions = (".avi",)
    reads_video = True
    train_defaults = dict(optimizer="adam", lr=0.05, weight_decay=0.0, epochs=30, batch_size=8)
    smoke = dict(epochs=20)
    space = {"lr": {"choice": [0.05, 0.01]}}
    start = [{"lr": 0.05}]
    smoke_space = space
    smoke_start = start
    demo = Demo(4, 4, None)

    def process_item(self, item: SourceItem, label: int, options, context, notes=None):
        signal = _signal(item.path, options)
        return IntensityRow(item.id, item.subject, label, item.label, len(signal),
                            signal.tolist(), item.path)  # fmt: skip

    def table(self, rows) -> pa.Table:
        return pa.table({
            "id": [r.id for r in rows], "subject": [r.subject for r in rows],
            "label": pa.array([r.label for r in rows], pa.int16()),
            "label_name": [r.label_name for r in rows],
            "n_frames": pa.array([r.n_frames for r in rows], pa.int32()),
            "signal": pa.array([r.signal for r in rows], pa.list_(pa.float32())),
            "source": [r.source for r in rows],
        })  # fmt: skip

    def collate(self, cfg, *, train, seed, epoch, forbidden=frozenset()):
        def collate(batch: dict) -> dict:
            check_allowed(batch["id"], forbidden)
            x = np.stack([_resample(np.asarray(s, np.float32), cfg.length)
                          for s in batch["signal"]])  # fmt: skip
            return {
                "x": torch.from_numpy(x),
                "y": torch.as_tensor(batch["label"], dtype=torch.long),
            }

        return collate

    def inputs(self, cfg, batch, device):
        return batch["x"].to(device)

    def build_model(self, cfg, data: DataInfo):
        return Conv1dNet(data.num_classes, cfg.width)

    def outputs(self, raw):
        return {"fused": raw}

    def loss(self, cfg, outputs, y):
        return F.cross_entropy(outputs["fused"], y)

    def example_input(self, cfg, data, batch):
        return torch.rand(batch, cfg.length, generator=torch.Generator().manual_seed(0))

    def prepare(self, path, data: DataInfo, context=None):
        item = SourceItem(id=Path(path).stem, subject="", label="", path=str(path))
        return self.process_item(item, 0, self.options_type(**data.options), context)


INTENSITY = IntensityBranch()


def _write_set(root: Path, subjects: int = 4, per_class: int = 4) -> None:
    """Videos whose brightness ramps up (brightening) or down (darkening): each subject its own
    range, each video its own length and noise; the same set of frames in both orders."""
    from datasets.synthetic import write_video

    rng = np.random.default_rng(0)
    for s in range(subjects):
        lo = 40 + 20 * s
        for k in range(per_class):
            n = int(rng.integers(10, 16))
            ramp = np.linspace(lo, lo + 120, n) + rng.normal(0, 3, n)
            frames = np.clip(ramp, 0, 255).astype(np.uint8)[:, None, None, None]
            frames = np.broadcast_to(frames, (n, 24, 24, 3)).copy()
            for name, seq in (("brightening", frames), ("darkening", frames[::-1])):
                (root / name).mkdir(parents=True, exist_ok=True)
                write_video(root / name / f"s{s}_{k}.avi", np.ascontiguousarray(seq))


def test_a_branch_defined_in_this_file_runs_through_every_command(tmp_path, ray_session, capsys):
    from distributed import evaluate, folds, predict, preprocess, train

    raw, shards, out = tmp_path / "raw", tmp_path / "shards", tmp_path / "out"
    _write_set(raw)
    # preprocess (Ray tasks that import this module by the branch's name), folds written with it
    assert preprocess.main([NAME, "--source", str(raw), "--out", str(shards), "--folds", "2",
                            "--inner-folds", "2"]) == 0  # fmt: skip
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["kind"] == NAME and manifest["counts"]["written"] == 32
    assert sorted(manifest["classes"]) == sorted(CLASSES)
    # folds rewritten by their own command (another seed) read the branch's shards too
    assert folds.main([str(shards), "--protocol", "subjects", "--folds", "2", "--inner-folds",
                       "2", "--seed", "1"]) == 0  # fmt: skip
    # train --local on outer fold 0's training rows, then evaluate on its test fold
    assert train.main([NAME, "--shards", str(shards), "--fold", "0", "--local", "--out",
                       str(out), "--name", "f0"]) == 0  # fmt: skip
    model = out / "f0" / "model.pt"
    assert model.exists()
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(model), "--shards", str(shards), "--fold", "0",
                          "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n"] == 16 and summary["uar"] >= 0.9, summary  # the order over time, learnt
    # predict on raw videos of both classes
    videos = [raw / "brightening" / "s0_0.avi", raw / "darkening" / "s3_1.avi"]
    assert predict.main([*map(str, videos), "--checkpoint", str(model), "--out",
                         str(tmp_path / "pred.json")]) == 0  # fmt: skip
    items = json.loads((tmp_path / "pred.json").read_text())["items"]
    assert [r["label"] for r in items] == ["brightening", "darkening"], items
