"""Export a trained checkpoint to a deployable graph: ``torch.export`` or TorchScript.

Inputs are what the branch's model takes (the branch builds the example): facial models take
``(B, C, K, 3, S, S)`` uint8 clips (C, K from the checkpoint's model config, S its crop size;
build them with ``datasets.clips.sample_clips`` on face crops, as prediction does); gesture
models take the representation ``(B, Cin, S, L)`` float32
(``datasets.representations.build_representation``). Outputs, a tuple: ``probs`` (the
probabilities of the checkpoint's predicting head, what ``distributed.evaluate`` and
``distributed.predict`` report), then every head's raw score in the branch's order: facial
``(probs, p1, p2, p3, fused)``, gesture ``(probs, fused)`` (the logits).

- ``exported`` (default): ``torch.export`` with a dynamic batch dimension, saved with
  ``torch.export.save``; load with ``torch.export.load(FILE).module()``. torch.export specialises
  sizes 0 and 1, so the graph accepts B >= 2; :func:`load` pads a single item to two.
- ``torchscript``: ``torch.jit.trace`` of the eager model; load with ``torch.jit.load``. Sizes
  are read from the input at run time, so any B works. Works for ACCM, CNN and ResNet + TLSTM;
  SISTCM's block uses custom autograd functions, which tracing refuses (use ``exported``).

Both files carry ``emovis.json`` (class names, preprocessing, input shape, outputs) as an extra
file. No ONNX: the ``onnx`` package is not a dependency of this project.

Graphs are exported on the CPU but name no device, so the same file runs on a GPU:
``load(FILE, "cuda")`` (or ``torch.export.load(FILE).module().to("cuda")``). torch.export records
the example's device wherever a model creates a tensor with ``device=x.device`` or asserts an
input's metadata before a ``.to(dtype)``; the asserts are released here (their dtype and layout
checks stay), and a graph that still names a device is refused (:func:`hardcoded_devices`).
:func:`run_exported_on` runs a file on a device against the CPU (no Ray).
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import torch
from torch import nn

from branches import get_branch
from datasets import storage
from distributed.core import commands
from distributed.training.checkpoint import ModelFile, load_model
from distributed.training.steps import head_probs

META = "emovis.json"
FORMATS = ("exported", "torchscript")


class ExportWrapper(nn.Module):
    """A tuple-returning forward around a branch's model (no dicts in the graph): the predicting
    head's probabilities, then every head's raw score."""

    def __init__(self, model: nn.Module, branch: str, head: str = "fused"):
        super().__init__()
        self.model, self.head = model, head
        self.branch = get_branch(branch)

    def forward(self, x: torch.Tensor):
        out = self.branch.outputs(self.model(x))
        return (head_probs(out, self.head), *(out[h] for h in self.branch.heads))


def example_input(mf: ModelFile, batch: int = 2) -> torch.Tensor:
    """A random input of the checkpoint's shape (batch ``batch``)."""
    return mf.branch.example_input(mf.config.model, mf.data, batch)


def metadata(mf: ModelFile, fmt: str, shape: tuple[int, ...], dtype: torch.dtype) -> dict:
    return {
        "format": fmt,
        "kind": mf.config.branch,
        "model": mf.config.model.name,
        "class_names": list(mf.classes),
        "preprocessing": mf.data.options,
        "config": mf.config.flat(),
        "input_shape": ["B", *shape[1:]],
        "input_dtype": str(dtype).replace("torch.", ""),
        "outputs": ["probs", *mf.branch.export_names],
        "min_batch": 2 if fmt == "exported" else 1,
        "git_commit": mf.git_commit,
        "trained_on": mf.trained_on.to_json(),
    }


@torch.no_grad()
def export_program(model: nn.Module, branch: str, example: torch.Tensor, head: str = "fused"):
    """``torch.export`` of the wrapped model with a dynamic batch dimension."""
    dims = {
        0: torch.export.Dim.AUTO,
        **{i: torch.export.Dim.STATIC for i in range(1, example.dim())},
    }
    program = torch.export.export(
        ExportWrapper(model, branch, head).eval(), (example,), dynamic_shapes=(dims,)
    )
    return release_device_asserts(program)


def release_device_asserts(program):
    """Drop the ``device`` that torch.export writes into the input-metadata asserts it puts
    before every ``.to(dtype)`` (``_assert_tensor_metadata(x, dtype=uint8, device=cpu)``): kept,
    it makes the graph fail on any other device. Their dtype and layout checks stay."""
    assert_op = torch.ops.aten._assert_tensor_metadata.default
    changed = False
    for node in program.graph.nodes:
        if node.target is assert_op and node.kwargs.get("device") is not None:
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "device"}
            changed = True
    if changed:
        program.graph_module.recompile()
    return program


def hardcoded_devices(graph) -> list[str]:
    """The places where an exported program (or a TorchScript module) names a device, as text
    (``aten.zeros.default: device=cpu``); empty when the graph runs wherever its inputs are."""
    if isinstance(graph, torch.jit.ScriptModule):
        return [
            f"{n.kind()}: {n.output().toIValue()}"
            for n in graph.inlined_graph.nodes()
            if n.kind() == "prim::Constant" and n.output().type().kind() == "DeviceObjType"
        ]
    found = []
    for node in graph.graph.nodes:
        values = _leaves((node.args, node.kwargs))
        found += [f"{node.target}: device={v}" for v in values if isinstance(v, torch.device)]
    return found


def _leaves(value) -> list:
    """The non-container values in nested tuples, lists and dicts (a node's arguments)."""
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


def _refuse_device_constants(graph, name: str) -> None:
    found = hardcoded_devices(graph)
    if found:
        raise ValueError(
            f"the exported {name} names a device, so it would run there only: "
            + "; ".join(found[:5])
            + " (create tensors with x.new_zeros / torch.zeros_like(x), not device=x.device)"
        )


def export_checkpoint(checkpoint, out: str, fmt: str = "exported", batch: int = 2) -> dict:
    """Export ``checkpoint`` (path, URI or bytes) to ``out``; returns the metadata written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    data = checkpoint if isinstance(checkpoint, bytes) else storage.read_bytes(str(checkpoint))
    mf = load_model(data, "cpu", name=None if isinstance(checkpoint, bytes) else str(checkpoint))
    model, cfg = mf.model, mf.config
    example = example_input(mf, max(batch, 2))
    meta = metadata(mf, fmt, tuple(example.shape), example.dtype)
    extra = {META: json.dumps(meta)}
    if fmt == "exported":
        program = export_program(model, cfg.branch, example, cfg.head)
        _refuse_device_constants(program, cfg.model.name)
        buf = io.BytesIO()
        torch.export.save(program, buf, extra_files=extra)
        storage.atomic_write_bytes(out, buf.getvalue())
    else:
        buf = io.BytesIO()
        try:
            wrapper = ExportWrapper(model, cfg.branch, cfg.head).eval()
            with torch.no_grad():
                traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            _refuse_device_constants(traced, cfg.model.name)
            torch.jit.save(traced, buf, _extra_files=extra)  # Python ops fail here, not above
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise commands.UsageError(
                f"{cfg.model.name} cannot be saved as TorchScript ({first}); use --format exported"
            ) from None
        storage.atomic_write_bytes(out, buf.getvalue())
    return meta


def load(path: str, device: str | torch.device = "cpu"):
    """(callable, metadata) for a file written by :func:`export_checkpoint`, either format, its
    weights on ``device`` (inputs must be there too)."""
    data = storage.read_bytes(path)
    extra = {META: ""}
    try:
        module = torch.jit.load(io.BytesIO(data), _extra_files=extra)
    except RuntimeError:
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
        module = program.module().to(device)
    else:
        if torch.device(device) != torch.device("cpu"):  # (TorchScript cannot load on "meta")
            module = torch.jit.load(io.BytesIO(data), map_location=device)
    meta = json.loads(extra[META])
    if meta["min_batch"] <= 1:
        return module, meta

    def run(x: torch.Tensor):
        if x.shape[0] >= meta["min_batch"]:
            return module(x)
        pad = x[:1].expand(meta["min_batch"] - x.shape[0], *x.shape[1:])
        return tuple(o[: x.shape[0]] for o in module(torch.cat([x, pad])))

    return run, meta


def run_exported_on(path: str, device: str, batch: int = 3, seed: int = 0) -> dict[str, float]:
    """Run an exported file on ``device`` and on the CPU with the same random input of its
    metadata's shape (``batch`` items); returns ``max |device - cpu|`` per output name.

    On ``"meta"`` (shapes, no data; exported format only) the values are NaN and nothing runs on
    the CPU: the run itself checks that nothing in the graph is tied to the CPU. No Ray.
    """
    fn, meta = load(path, device)
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *meta["input_shape"][1:])
    if meta["input_dtype"] == "uint8":
        x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    else:
        x = torch.rand(shape, generator=g, dtype=getattr(torch, meta["input_dtype"])) * 3
    with torch.no_grad():
        got = fn(x.to(device))
    on = torch.device(device).type
    for name, out in zip(meta["outputs"], got, strict=True):
        if out.device.type != on or out.shape[0] != batch:
            raise RuntimeError(f"{name}: got {tuple(out.shape)} on {out.device}, not on {device}")
    if on == "meta":
        return {name: float("nan") for name in meta["outputs"]}
    with torch.no_grad():
        ref = load(path, "cpu")[0](x)
    return {
        name: float((a - b.float().cpu()).abs().max())
        for name, a, b in zip(meta["outputs"], ref, got, strict=True)
    }


def build_parser() -> argparse.ArgumentParser:
    p = commands.Parser(
        prog="python -m distributed.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by train or tune")
    p.add_argument("--out", required=True, help="output file (.pt2 or .ts by convention)")
    p.add_argument("--format", choices=FORMATS, default="exported")
    p.add_argument(
        "--batch",
        type=commands.count,
        default=2,
        help="example batch used to trace (at least 2 are)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the eager/exported comparison")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        commands.check_output_file(args.out, "--out")  # before the export, not after it
        meta = export_checkpoint(args.checkpoint, args.out, args.format, args.batch)
        print(f"{meta['kind']} model ({meta['model']}) -> {args.out} [{args.format}]")
        print(f"input {meta['input_dtype']} {meta['input_shape']}; outputs {meta['outputs']}")
        if not args.no_check:
            mf = load_model(storage.read_bytes(args.checkpoint), "cpu", name=args.checkpoint)
            fn, _ = load(args.out)
            x = example_input(mf, args.batch + 1)
            with torch.no_grad():
                ref = ExportWrapper(mf.model, mf.config.branch, mf.config.head).eval()(x)
                got = fn(x)
            diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
            print(f"max |eager - exported| on a batch of {x.shape[0]}: {diff:.2e}")
            if diff > 1e-4:
                print("error: the exported model disagrees with the eager model", file=sys.stderr)
                return 1
        return 0

    return commands.run_stoppable(body, commands.start_over("distributed.export", argv))


if __name__ == "__main__":
    sys.exit(main())
