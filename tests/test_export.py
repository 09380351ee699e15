"""Exported graphs (torch.export, TorchScript) reproduce the eager model at other batch sizes."""

from __future__ import annotations

import json

import pytest
import torch

from branches import DataInfo
from distributed import export
from distributed.core.config import default_config
from distributed.training.checkpoint import TrainedOn, load_model, save_model
from distributed.training.steps import build

pytestmark = pytest.mark.timeout(300)


def _checkpoint(path, kind, model=None):
    if kind == "facial":
        cfg = default_config(
            "facial", model=model or "sistcm", clips=2, frames=2, lstm1=16, lstm2=8
        )
        pre = {"size": 32, "detector": "haar", "every": 5, "margin": 0.2, "max_frames": None}
        nj = None
    else:
        cfg = default_config("gesture", rep_size=32, rep_length=40, width=16, se_reduction=4)
        pre = {"fill_missing": True}  # fmt: skip
        nj = 25
    torch.manual_seed(0)
    data = DataInfo(("a", "b", "c"), pre, nj)
    model = build(cfg, data).eval()
    # non-trivial BatchNorm statistics, so that eval-mode BN really is part of the graph
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    save_model(str(path), model, cfg, data, TrainedOn(), "test")  # fmt: skip
    return str(path)


def _eager(ckpt, x):
    mf = load_model(ckpt)
    with torch.no_grad():
        return export.ExportWrapper(mf.model, mf.config.branch, mf.config.head).eval()(x)


CASES = [
    ("gesture", "accm", "exported"),
    ("gesture", "accm", "torchscript"),
    ("facial", "sistcm", "exported"),
    ("facial", "resnet_tlstm", "torchscript"),
]


@pytest.mark.parametrize("kind,model,fmt", CASES)
def test_export_round_trip_matches_eager_at_other_batch_sizes(kind, model, fmt, tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pt", kind, model if kind == "facial" else None)
    out = tmp_path / f"model.{fmt}"
    meta = export.export_checkpoint(ckpt, str(out), fmt, batch=2)
    assert meta["kind"] == kind and meta["class_names"] == ["a", "b", "c"]
    fn, loaded_meta = export.load(str(out))
    assert loaded_meta == json.loads(json.dumps(meta))
    mf = load_model(ckpt)
    for batch in (1, 3, 5):  # never the exported batch size (2)
        x = export.example_input(mf, batch)
        g = torch.Generator().manual_seed(batch)
        if kind == "facial":
            # a different brightness per video (noise alone averages out in untrained features)
            level = torch.linspace(20, 230, batch).view(batch, 1, 1, 1, 1, 1)
            x = (level + 20 * torch.rand(x.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        else:
            x = torch.rand(x.shape, generator=g) * 3
        with torch.no_grad():
            got = fn(x)
        ref = _eager(ckpt, x)
        assert len(got) == len(ref) == len(meta["outputs"])
        for a, b in zip(got, ref):
            assert a.shape == b.shape and a.shape[0] == batch
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        # outputs differ between items: the comparison is not between constants
        assert batch == 1 or (ref[-1][:1] - ref[-1]).abs().max() > 1e-5
    # The file names no device (it was exported on the CPU and must run on a GPU as well) ...
    graph = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(str(out))
    assert export.hardcoded_devices(graph) == []
    if fmt == "exported":
        # ... and runs where its weights and input are: on "meta" (shapes, no data), a device
        # other than the one it was exported on, as far as a machine without a GPU can go.
        diffs = export.run_exported_on(str(out), "meta")
        assert list(diffs) == meta["outputs"]


def test_exported_program_file_loads_with_plain_torch(tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pt", "gesture")
    out = tmp_path / "model.pt2"
    assert export.main(["--checkpoint", ckpt, "--out", str(out)]) == 0
    extra = {export.META: ""}
    program = torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra[export.META])["outputs"] == ["probs", "logits"]
    x = export.example_input(load_model(ckpt), 4)
    probs, logits = program.module()(x)
    torch.testing.assert_close(logits, _eager(ckpt, x)[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))


def test_sistcm_torchscript_is_refused_with_a_clear_message(tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pt", "facial")
    with pytest.raises(ValueError, match="use --format exported"):
        export.export_checkpoint(ckpt, str(tmp_path / "m.ts"), "torchscript")


class _BakesItsDevice(torch.nn.Module):
    """What the device checks must catch: ``device=x.device``, traced on the CPU, becomes the
    constant ``cpu``; so does the zero state ``nn.LSTM`` makes when it is given none."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 3, batch_first=True)

    def forward(self, x):
        offset = torch.ones(x.shape[-1], device=x.device)
        seq, _ = self.lstm(x + offset)  # (B, T, 3)
        return (seq[:, -1],)


def test_device_checks_catch_a_graph_that_bakes_its_device():
    x = torch.rand(2, 5, 4)
    dims = ({0: torch.export.Dim.AUTO},)
    program = export.release_device_asserts(
        torch.export.export(_BakesItsDevice().eval(), (x,), dynamic_shapes=dims)
    )
    found = export.hardcoded_devices(program)
    assert any("aten.ones" in f and "device=cpu" in f for f in found), found
    assert sum("aten.zeros" in f for f in found) == 2, found  # the LSTM's h0 and c0
    with pytest.raises(ValueError, match="names a device"):
        export._refuse_device_constants(program, "toy")
    with torch.no_grad():
        traced = torch.jit.trace(_BakesItsDevice().eval(), (x,), check_trace=False)
    assert export.hardcoded_devices(traced)
    with pytest.raises(RuntimeError, match="device"):  # and it really fails elsewhere
        program.module().to("meta")(x.to("meta"))


def test_input_metadata_asserts_keep_dtype_and_drop_device():
    """``x.float()`` of a uint8 input makes torch.export assert the input's dtype AND device;
    the device goes, the dtype check stays."""

    class Scale(torch.nn.Module):
        def forward(self, x):
            return (x.float() / 255.0,)

    x = torch.randint(0, 256, (2, 3), dtype=torch.uint8)
    program = torch.export.export(Scale(), (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    assert export.hardcoded_devices(program)  # as torch.export writes it
    program = export.release_device_asserts(program)
    assert export.hardcoded_devices(program) == []
    module = program.module()
    torch.testing.assert_close(module(x)[0], x.float() / 255.0)
    with pytest.raises(Exception, match="(?i)dtype"):
        module(x.float())
