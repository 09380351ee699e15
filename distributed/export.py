"""Export a trained checkpoint to a deployable graph: ``torch.export`` or TorchScript.

    python -m distributed.export --checkpoint CKPT --out FILE [--format exported|torchscript]
        [--batch 2]

Inputs: facial models take ``(B, C, K, 3, S, S)`` uint8 clips (C, K, S from the checkpoint's
preprocessing; build them with ``datasets.clips.sample_clips`` on face crops, as
``distributed.predict`` does); gesture models take the representation ``(B, Cin, S, L)`` float32
(``datasets.representations.build_representation``). Outputs, a tuple: facial
``(probs, p1, p2, p3, fused)``, gesture ``(probs, logits)``, where ``probs`` are the probabilities
of the checkpoint's predicting head (``config["head"]``, the fused score by default; what
``distributed.evaluate`` and ``distributed.predict`` report).

- ``exported`` (default): ``torch.export`` with a dynamic batch dimension, saved with
  ``torch.export.save``; load with ``torch.export.load(FILE).module()``. torch.export specialises
  sizes 0 and 1, so the graph accepts B >= 2; :func:`load` pads a single item to two.
- ``torchscript``: ``torch.jit.trace`` of the eager model; load with ``torch.jit.load``. Sizes
  are read from the input at run time, so any B works. Works for ACCM, CNN and ResNet + TLSTM;
  SISTCM's block uses custom autograd functions, which tracing refuses (use ``exported``).

Both files carry ``emovis.json`` (class names, preprocessing, input shape, outputs) as an extra
file. No ONNX: the ``onnx`` package is not a dependency of this project.
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import torch
from torch import nn

from datasets import storage
from distributed.steps import head_probs, load_model_checkpoint

META = "emovis.json"
FORMATS = ("exported", "torchscript")


class ExportWrapper(nn.Module):
    """A tuple-returning forward around a facial or gesture model (no dicts in the graph)."""

    def __init__(self, model: nn.Module, kind: str, head: str = "fused"):
        super().__init__()
        self.model, self.kind, self.head = model, kind, head

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        if self.kind == "facial":
            probs = head_probs(out, self.head)
            return probs, out["p1"], out["p2"], out["p3"], out["fused"]
        return out.softmax(dim=1), out


def example_input(blob: dict, batch: int = 2) -> torch.Tensor:
    """A random input of the checkpoint's shape (batch ``batch``)."""
    pre, cfg, kw = blob["preprocessing"], blob["config"], blob["model_kwargs"]
    g = torch.Generator().manual_seed(0)
    if cfg["kind"] == "facial":
        c, k, s = pre.get("clips", cfg["clips"]), pre.get("frames", cfg["frames"]), pre["size"]
        return torch.randint(0, 256, (batch, c, k, 3, s, s), dtype=torch.uint8, generator=g)
    size, length = pre.get("rep_size", cfg["rep_size"]), pre.get("rep_length", cfg["rep_length"])
    rep = pre.get("representation", cfg["representation"])
    shape = (size, size) if rep == "potion" else (size, length)
    return torch.rand((batch, kw["in_channels"], *shape), generator=g)


def metadata(blob: dict, fmt: str, shape: tuple[int, ...]) -> dict:
    kind = blob["config"]["kind"]
    outputs = ["probs", "p1", "p2", "p3", "fused"] if kind == "facial" else ["probs", "logits"]
    return {
        "format": fmt,
        "kind": kind,
        "model": blob["model"],
        "class_names": blob["class_names"],
        "preprocessing": blob["preprocessing"],
        "input_shape": ["B", *shape[1:]],
        "input_dtype": "uint8" if kind == "facial" else "float32",
        "outputs": outputs,
        "min_batch": 2 if fmt == "exported" else 1,
        "git_commit": blob.get("git_commit"),
        "fold": blob.get("fold"),
    }


@torch.no_grad()
def export_program(model: nn.Module, kind: str, example: torch.Tensor, head: str = "fused"):
    """``torch.export`` of the wrapped model with a dynamic batch dimension."""
    dims = {
        0: torch.export.Dim.AUTO,
        **{i: torch.export.Dim.STATIC for i in range(1, example.dim())},
    }
    return torch.export.export(
        ExportWrapper(model, kind, head).eval(), (example,), dynamic_shapes=(dims,)
    )


def export_checkpoint(checkpoint, out: str, fmt: str = "exported", batch: int = 2) -> dict:
    """Export ``checkpoint`` (path, URI or bytes) to ``out``; returns the metadata written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    data = checkpoint if isinstance(checkpoint, bytes) else storage.read_bytes(str(checkpoint))
    model, cfg, blob = load_model_checkpoint(data, "cpu")
    example = example_input(blob, max(batch, 2))
    meta = metadata(blob, fmt, tuple(example.shape))
    extra = {META: json.dumps(meta)}
    if fmt == "exported":
        program = export_program(model, cfg.kind, example, cfg.head)
        buf = io.BytesIO()
        torch.export.save(program, buf, extra_files=extra)
        storage.atomic_write_bytes(out, buf.getvalue())
    else:
        buf = io.BytesIO()
        try:
            wrapper = ExportWrapper(model, cfg.kind, cfg.head).eval()
            with torch.no_grad():
                traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            torch.jit.save(traced, buf, _extra_files=extra)  # Python ops fail here, not above
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise ValueError(
                f"{blob['model']} cannot be saved as TorchScript ({first}); use --format exported"
            ) from None
        storage.atomic_write_bytes(out, buf.getvalue())
    return meta


def load(path: str):
    """(callable, metadata) for a file written by :func:`export_checkpoint`, either format."""
    data = storage.read_bytes(path)
    extra = {META: ""}
    try:
        module = torch.jit.load(io.BytesIO(data), _extra_files=extra)
    except RuntimeError:
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
        module = program.module()
    meta = json.loads(extra[META])
    if meta["min_batch"] <= 1:
        return module, meta

    def run(x: torch.Tensor):
        if x.shape[0] >= meta["min_batch"]:
            return module(x)
        pad = x[:1].expand(meta["min_batch"] - x.shape[0], *x.shape[1:])
        return tuple(o[: x.shape[0]] for o in module(torch.cat([x, pad])))

    return run, meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distributed.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by train or tune")
    p.add_argument("--out", required=True, help="output file (.pt2 or .ts by convention)")
    p.add_argument("--format", choices=FORMATS, default="exported")
    p.add_argument("--batch", type=int, default=2, help="example batch used to trace (>= 2)")
    p.add_argument("--no-check", action="store_true", help="skip the eager/exported comparison")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    meta = export_checkpoint(args.checkpoint, args.out, args.format, args.batch)
    print(f"{meta['kind']} model ({meta['model']}) -> {args.out} [{args.format}]")
    print(f"input {meta['input_dtype']} {meta['input_shape']}; outputs {meta['outputs']}")
    if not args.no_check:
        model, cfg, blob = load_model_checkpoint(storage.read_bytes(args.checkpoint), "cpu")
        fn, _ = load(args.out)
        x = example_input(blob, args.batch + 1)
        with torch.no_grad():
            ref = ExportWrapper(model, cfg.kind, cfg.head).eval()(x)
            got = fn(x)
        diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
        print(f"max |eager - exported| on a batch of {x.shape[0]}: {diff:.2e}")
        if diff > 1e-4:
            print("error: the exported model disagrees with the eager model", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
