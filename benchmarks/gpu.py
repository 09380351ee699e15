"""First GPU run (issue 25): facial training steps, host syncs, mixed precision, gesture, export.

    python benchmarks/gpu.py --json gpu.json            # full sizes on CUDA (<= 6 min on one H100)
    python benchmarks/gpu.py --smoke --json smoke.json  # tiny sizes, CPU or GPU, well under 1 min
    python benchmarks/gpu.py --sections train_steps,export --budget 200 --json part.json

Imports only the standard library, torch, numpy and pyarrow, plus the project's Ray-free modules
(``models``, ``branches``, ``datasets.*``, ``distributed.core.config/steps/checkpoint/export/
loop/local_mode/stream``), each
inside the section that needs it: a module that fails to import fails one section, not the run.
The JSON records whether Ray (or pandas, scikit-learn, Optuna) was imported; the GPU machine has
none of them. Without CUDA every section runs at the smoke sizes and nothing is skipped.

Sections (each returns a dict for the JSON with a table; a failed one records its error, the
others still run, and the exit status is 1 if any failed):

a. ``train_steps``: SGD training steps of SISTCM + TLSTM, ResNet + TLSTM (both built by the facial
   branch, K as SISTCM's) and a plain 2D ResNet-18 on the same B*C*K frames, at S in {224, 112},
   B in {8, 32}, fp32 / fp16 (GradScaler) / bf16 (autocast), cudnn.benchmark on / off: ms/step
   (CUDA events, median), clips/s, frames/s, peak memory, FLOPs per step (FlopCounterMode on one
   forward + backward) and MFU against the GPU's dense bf16 peak. It runs last, on whatever is
   left of ``--budget``; cases that would overrun it are listed as skipped, in priority order
   (cudnn.benchmark on first, fp32 with benchmark off at 224 px last).
b. ``host_sync``: the same step with a host sync per step (``float(loss)``, per-head argmax to
   the CPU) vs loss and confusion matrices kept on the device, synced once.
c. ``precision_agreement``: eval-mode heads in TF32 / fp16 / bf16 vs strict fp32.
d. ``gesture``: the joint-trajectory representation and an ACCM training step, device vs CPU.
e. ``export``: a model file exported by ``distributed.export`` and run on the device.
f. ``collective``: all-reduces through the training loop's code path in a process group of one
   (``cpu:gloo,cuda:nccl`` on a GPU): DDP's gradients and the epoch statistics on the device, and
   a CPU tensor through the same group.
   ``epoch_loop``: the real loop (``distributed.training.loop``, in-process host) over 1,024
   generated
   videos in Parquet shards (:func:`write_clip_shards`; ``clip_shards`` checks it) read by the
   streamed reader: end-to-end videos/s against the step alone, and the data-wait fraction.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # this repository's `datasets`, not an installed one
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from branches.facial.data import FacialRow, facial_frames, facial_table  # noqa: E402

T_START = time.perf_counter()
CLASSES = ("angry", "contempt", "disgust", "fear", "happy", "sad", "surprise")  # CK+, 7 classes
PRECISIONS = ("bf16", "fp16", "fp32")
NOT_ALLOWED = ("ray", "pandas", "sklearn", "optuna")  # absent on the GPU machine
# Dense bf16 tensor-core peaks in TFLOP/s by device name, first match wins; None = unknown.
PEAK_BF16 = (
    ("H100 PCIe", 756.0, "H100 PCIe"),
    ("H100 NVL", None, "H100 NVL (not in the table)"),
    ("H100", 989.0, "H100 SXM"),
    ("H200", 989.0, "H200"),
    ("A100", 312.0, "A100"),
    ("A10G", 70.0, "A10G (approximate)"),
    ("L40S", 362.0, "L40S"),
    ("L40", None, "L40 (not in the table)"),
    ("L4", 121.0, "L4"),
)


@dataclass(frozen=True)
class Sizes:
    """Every size the sections use. Defaults: the paper's (C = 5, K = 2, S = 224, H1 = 1024,
    H2 = 512; gesture J = 28, S = 64, L = 300, W = 128)."""

    sizes: tuple[int, ...] = (224, 112)
    batches: tuple[int, ...] = (8, 32)
    clips: int = 5
    frames: int = 2
    lstm1: int = 1024
    lstm2: int = 512
    warmup: int = 3
    repeats: int = 10
    sync_steps: int = 20
    agree_batch: int = 32
    g_batch: int = 16
    g_frames: int = 300
    g_joints: int = 28
    g_size: int = 64
    g_length: int = 300
    g_width: int = 128
    g_se: int = 16
    cpu_repeats: int = 3
    export_size: int = 112
    export_lstm: tuple[int, int] = (64, 32)
    shard_clips: int = 12
    shard_size: int = 16
    shard_frames: int = 4
    loop_clips: int = 1024
    loop_size: int = 224
    loop_batch: int = 32
    loop_epochs: int = 3  # the last one is measured (the first pays cudnn.benchmark's search)
    loop_batch_small: int = 4


FULL = Sizes()
SMOKE = Sizes(
    sizes=(32,),
    batches=(2,),
    clips=2,
    frames=2,
    lstm1=32,
    lstm2=16,
    warmup=1,
    repeats=1,
    sync_steps=1,
    agree_batch=4,
    g_batch=4,
    g_frames=40,
    g_joints=5,
    g_size=16,
    g_length=20,
    g_width=8,
    g_se=4,
    cpu_repeats=2,
    export_size=32,
    export_lstm=(16, 8),
    loop_clips=24,
    loop_size=32,
    loop_batch=4,
    loop_epochs=2,
)


# fp16 training on a CPU: torch has no fast fp16 convolution backward there (it takes the reference
# _slow_conv2d_backward: ~6 s for one tiny SISTCM step on a 2-core machine, ~20x fp32).
CPU_FP16_SKIP = "skipped: fp16 on CPU (slow reference conv backward; one fp16 case tried)"


class OverBudget(RuntimeError):
    """A case whose timed steps would end after the run's deadline."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    from distributed.training.loop import autocast as loop_autocast  # the loop's own (Ray-free)

    return loop_autocast(device, precision)


def auto_precision(device: torch.device) -> str:
    """What the training loop's ``precision="auto"`` runs in on ``device``."""
    from distributed.training.loop import resolve_precision

    return resolve_precision("auto", device)


def precision_skip(device: torch.device, precision: str, cache: dict) -> str | None:
    """None if a conv + LSTM step runs under ``precision`` on ``device``, else why not."""
    if precision not in cache:
        reason = None
        if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
            reason = "bf16 not supported by this GPU"
        else:
            try:
                net = nn.ModuleDict({"c": nn.Conv2d(3, 4, 3), "l": nn.LSTM(4, 4, batch_first=True)})
                net = net.to(device)
                with autocast(device, precision):
                    z = net["c"](torch.rand(2, 3, 8, 8, device=device)).mean(dim=(2, 3))
                    out, _ = net["l"](z[:, None])
                out.float().sum().backward()
            except RuntimeError as err:
                reason = f"{precision} autocast unsupported here ({first_line(err)})"
        cache[precision] = reason
    return cache[precision]


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def median(values) -> float | None:
    return float(statistics.median(values)) if values else None


def time_steps(step: Callable, device, warmup: int, repeats: int, deadline=None) -> list[float]:
    """Milliseconds of ``repeats`` steps after ``warmup`` (CUDA events on a GPU, wall clock on the
    CPU). The last warm-up step is timed on its own to refuse a case that would end after
    ``deadline`` (``time.perf_counter()`` seconds), raising :class:`OverBudget`."""
    for _ in range(max(warmup - 1, 0)):
        step()
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    one = time.perf_counter() - t0
    if deadline is not None and time.perf_counter() + one * repeats > deadline:
        raise OverBudget(f"{repeats} steps of ~{one * 1e3:.0f} ms would overrun the budget")
    if device.type == "cuda":
        marks = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repeats)
        ]
        for start, end in marks:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in marks]
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def peak_tflops(name: str) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, which entry matched) for a device name; (None, why) if unknown."""
    for key, peak, label in PEAK_BF16:
        if key in name:
            return peak, label
    return None, "unknown device: MFU not computed"


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_table(title: str, columns: list[str], rows: list[list], long: int = 32) -> None:
    """A plain text table: numbers right-aligned, text left-aligned; text longer than ``long``
    characters is printed once below the table and referred to as ``[n]``."""
    notes: list[str] = []

    def cell(v) -> str:
        if not isinstance(v, str):
            return fmt(v)
        if len(v) <= long:
            return v
        if v not in notes:
            notes.append(v)
        n = notes.index(v) + 1
        head = v.split(":")[0] if ":" in v[:long] else v[: long - 8]
        return f"{head} [{n}]"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for raw, r in zip(rows, cells):
        parts = [
            v.ljust(w) if isinstance(x, str) else v.rjust(w) for x, v, w in zip(raw, r, widths)
        ]
        print("  ".join(parts).rstrip())
    for n, text in enumerate(notes, 1):
        print(f"  [{n}] {text}")


def facial_batch(batch: int, sizes: Sizes, size: int, device, seed: int = 0) -> dict:
    """A collated facial batch as :class:`branches.facial.FacialCollate` makes it: ``x`` a
    channels-last view (B, C, K, 3, S, S) of uint8 (B, C, K, S, S, 3) frames, ``y`` labels; in
    page-locked memory when the device is a GPU (the loop's ``Pinned`` collate)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, sizes.clips, sizes.frames, size, size, 3)
    raw = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    y = torch.randint(0, len(CLASSES), (batch,), generator=g)
    if device.type == "cuda":
        raw, y = raw.pin_memory(), y.pin_memory()
    return {"x": raw.permute(0, 1, 2, 5, 3, 4), "y": y}  # (B, C, K, 3, S, S)


class PlainResNet18(nn.Module):
    """The 2D ResNet-18 alone (``models.sistcm.resnet18_frames``) on the same B*C*K frames, with a
    linear classifier on its clip features averaged over clips: SISTCM's cost baseline."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from models.sistcm import resnet18_frames

        self.backbone = resnet18_frames()
        self.fc = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return self.fc(self.backbone(x).view(b, c, -1).mean(dim=1))  # (B, classes)


def facial_trainee(name: str, sizes: Sizes, size: int):
    """(CPU model, model config for the branch's inputs, forward_loss(model, x, y) -> (loss,
    outputs dict)) of "sistcm", "resnet_tlstm" (through the facial branch) or "resnet18"."""
    from branches import DataInfo, get_branch
    from distributed.core.config import default_config

    branch = get_branch("facial")
    dims = dict(clips=sizes.clips, frames=sizes.frames, lstm1=sizes.lstm1, lstm2=sizes.lstm2)
    mcfg = default_config("facial", model="sistcm" if name == "resnet18" else name, **dims).model
    torch.manual_seed(0)
    if name == "resnet18":
        model = PlainResNet18(len(CLASSES))

        def forward_loss(m, x, y):
            out = {"fused": m(x)}
            return F.cross_entropy(out["fused"], y), out

    else:
        model = branch.build_model(mcfg, DataInfo(CLASSES, {"size": size}))

        def forward_loss(m, x, y):
            out = branch.outputs(m(x))
            return branch.loss(mcfg, out, y), out

    return model, mcfg, forward_loss


def on_device(model: nn.Module, device) -> nn.Module:
    """The model as the training loop places it: channels_last on CUDA, then on the device."""
    model = copy.deepcopy(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.to(device)


def make_step(model, mcfg, forward_loss, batch, device, precision, lr=0.005):
    """One training step as ``distributed.training.loop.run_epoch`` takes it (SGD of the facial
    branch's
    defaults; the gradient scaler enabled for fp16 only). Returns (step, optimizer)."""
    from branches import get_branch

    branch = get_branch("facial")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    model.train()

    def step():
        y = batch["y"].to(device, non_blocking=True)
        x = branch.inputs(mcfg, batch, device)
        with autocast(device, precision):
            loss, out = forward_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss, out, y

    return step, opt


def count_flops(model, mcfg, forward_loss, batch, device) -> int:
    """FLOPs of one fp32 forward + backward (convolutions and matrix products as
    ``FlopCounterMode`` counts them; cuDNN's fused LSTM kernels are not counted: < 1%)."""
    from torch.utils.flop_counter import FlopCounterMode

    from branches import get_branch

    x = get_branch("facial").inputs(mcfg, batch, device)
    y = batch["y"].to(device)
    with FlopCounterMode(display=False) as counter:
        loss, _ = forward_loss(model, x, y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# a. Training steps


@dataclass(frozen=True)
class Case:
    model: str
    size: int
    batch: int
    precision: str
    benchmark: bool


def train_cases(sizes: Sizes) -> list[Case]:
    """Every case, in the order they run: cudnn.benchmark on first (the loop's setting), then off,
    and fp32 with benchmark off at the largest size last (the first to fall to the budget)."""
    cases = [
        Case(m, s, b, p, bench)
        for bench in (True, False)
        for s in sizes.sizes
        for b in sizes.batches
        for p in PRECISIONS
        for m in ("sistcm", "resnet18", "resnet_tlstm")
    ]
    largest = max(sizes.sizes)
    return sorted(
        cases,
        key=lambda c: (
            (not c.benchmark) + (not c.benchmark and c.precision == "fp32" and c.size == largest)
        ),
    )


def train_case(case: Case, sizes: Sizes, device, peak, cache: dict, deadline) -> dict:
    """One case's measurements; ``cache`` keeps CPU models, pinned input batches and FLOP
    counts across cases."""
    if ("model", case.model) not in cache:
        cache["model", case.model] = facial_trainee(case.model, sizes, case.size)
    template, mcfg, forward_loss = cache["model", case.model]
    if ("batch", case.size, case.batch) not in cache:
        cache["batch", case.size, case.batch] = facial_batch(case.batch, sizes, case.size, device)
    batch = cache["batch", case.size, case.batch]
    torch.backends.cudnn.benchmark = case.benchmark
    model = on_device(template, device)
    key = ("flops", case.model, case.size, case.batch)
    if key not in cache:
        cache[key] = count_flops(model, mcfg, forward_loss, batch, device)
    flops = cache[key]
    step, _ = make_step(model, mcfg, forward_loss, batch, device, case.precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms = time_steps(step, device, sizes.warmup, sizes.repeats, deadline)
    t = median(ms)
    clips = case.batch * sizes.clips
    out = {
        "status": "ran",
        "ms_per_step": t,
        "ms_min": min(ms),
        "ms_max": max(ms),
        "clips_per_s": clips / (t / 1e3),
        "frames_per_s": clips * sizes.frames / (t / 1e3),
        "flops_per_step": flops,
        "tflops_per_s": flops / (t / 1e3) / 1e12,
        "mfu": None if peak is None else flops / (t / 1e3) / (peak * 1e12),
        "peak_memory_mib": None,
    }
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def train_steps_section(args, device) -> dict:
    sizes: Sizes = args.sizes
    peak, _ = peak_tflops(torch.cuda.get_device_name(device) if device.type == "cuda" else "")
    cache: dict = {}
    probes: dict = {}
    was = torch.backends.cudnn.benchmark
    results = []
    try:
        for case in train_cases(sizes):
            if device.type == "cuda" and results and results[-1]["status"].startswith("failed"):
                torch.cuda.empty_cache()  # after an OOM, once its traceback is gone
            row = asdict(case)
            reason = precision_skip(device, case.precision, probes)
            if reason:
                results.append({**row, "status": f"skipped: {reason}"})
                continue
            cpu_fp16 = device.type == "cpu" and case.precision == "fp16"
            tried = [r for r in results if not r["status"].startswith("skipped")]
            if cpu_fp16 and any(r["precision"] == "fp16" for r in tried):
                results.append({**row, "status": CPU_FP16_SKIP})
                continue
            if args.deadline is not None and time.perf_counter() + 2.0 > args.deadline:
                results.append({**row, "status": "skipped: budget"})
                continue
            try:
                row.update(train_case(case, sizes, device, peak, cache, args.deadline))
            except OverBudget as err:
                row["status"] = f"skipped: budget ({err})"
            except Exception as err:  # one case (an OOM, an unsupported kernel) is a finding
                row["status"] = f"failed: {type(err).__name__}: {first_line(err)}"
            results.append(row)
    finally:
        torch.backends.cudnn.benchmark = was
    by_key = {
        (r["size"], r["batch"], r["precision"], r["benchmark"], r["model"]): r for r in results
    }
    for r in results:
        base = by_key.get((r["size"], r["batch"], r["precision"], r["benchmark"], "resnet18"))
        ok = r.get("ms_per_step") and base is not None and base.get("ms_per_step")
        r["vs_resnet18"] = r["ms_per_step"] / base["ms_per_step"] if ok else None
    failed = [r for r in results if r["status"].startswith("failed")]
    ran = sum(r["status"] == "ran" for r in results)
    columns = ["model", "S", "B", "prec", "cudnn.bm", "ms/step", "clips/s", "frames/s"]
    columns += ["peak MiB", "GFLOP/step", "TFLOP/s", "MFU %", "x R18", "status"]
    rows = [
        [
            r["model"],
            r["size"],
            r["batch"],
            r["precision"],
            "on" if r["benchmark"] else "off",
            r.get("ms_per_step"),
            r.get("clips_per_s"),
            r.get("frames_per_s"),
            r.get("peak_memory_mib"),
            None if r.get("flops_per_step") is None else r["flops_per_step"] / 1e9,
            r.get("tflops_per_s"),
            None if r.get("mfu") is None else 100 * r["mfu"],
            None if r.get("vs_resnet18") is None else f"{r['vs_resnet18']:.2f}",
            r["status"],
        ]
        for r in results
    ]
    note = (
        f"C={sizes.clips} K={sizes.frames} (ResNet + TLSTM at SISTCM's K; the paper's baseline "
        f"uses K=3); SGD; TF32 for convolutions {torch.backends.cudnn.allow_tf32}, for matmuls "
        f"{torch.backends.cuda.matmul.allow_tf32} (torch's defaults); MFU = counted FLOPs / step "
        f"time / dense bf16 peak ({peak or 'unknown'} TFLOP/s) for every precision; {ran} of "
        f"{len(results)} cases ran"
    )
    return {
        "status": "failed" if failed else "ok",
        "cases": results,
        "peak_bf16_tflops": peak,
        "note": note,
        "table": {"columns": columns, "rows": rows},
    }


# ---------------------------------------------------------------------------------------------
# b. Host syncs per step


def count_syncs(device, fn: Callable) -> int | None:
    """Host-device synchronisations during ``fn()`` (CUDA's sync debug mode), None on the CPU."""
    if device.type != "cuda":
        fn()
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def host_sync_section(args, device) -> dict:
    from branches import get_branch

    sizes: Sizes = args.sizes
    size, batch_size, precision = sizes.sizes[0], sizes.batches[0], auto_precision(device)
    heads = get_branch("facial").heads
    k = len(CLASSES)
    template, mcfg, forward_loss = facial_trainee("sistcm", sizes, size)
    model = on_device(template, device)
    batch = facial_batch(batch_size, sizes, size, device)
    was = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # the training loop's setting
    step, _ = make_step(model, mcfg, forward_loss, batch, device, precision)

    def per_step_sync(n: int) -> None:
        for _ in range(n):
            loss, out, _ = step()
            float(loss.detach())
            for h in heads:
                out[h].argmax(dim=1).cpu()

    def on_device_stats(scatter: bool) -> Callable[[int], None]:
        def run(n: int) -> None:
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            cms = torch.zeros(len(heads), k * k, dtype=torch.int64, device=device)
            for _ in range(n):
                loss, out, y = step()
                loss_sum += loss.detach().double()
                for i, h in enumerate(heads):
                    cell = y * k + out[h].detach().argmax(dim=1)
                    if scatter:  # index_add_ needs no output size: nothing to read back
                        cms[i].index_add_(0, cell, torch.ones_like(cell))
                    else:
                        cms[i] += torch.bincount(cell, minlength=k * k)
            float(loss_sum)
            cms.cpu()  # the one sync, at the end

        return run

    variants = {
        "sync every step": per_step_sync,
        "on device (bincount)": on_device_stats(False),
        "on device (index_add_)": on_device_stats(True),
    }
    on_device_stats(True)(sizes.warmup)
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(3):  # rounds, order alternating
        for name in variants if r % 2 == 0 else reversed(list(variants)):
            t0 = time.perf_counter()
            variants[name](sizes.sync_steps)
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3 / sizes.sync_steps)
    syncs = {name: count_syncs(device, lambda fn=fn: fn(1)) for name, fn in variants.items()}
    torch.backends.cudnn.benchmark = was
    base = median(times["sync every step"])
    rows = [
        [name, median(times[name]), median(times[name]) - base, syncs[name]] for name in variants
    ]
    return {
        "status": "ok",
        "model": "sistcm",
        "size": size,
        "batch": batch_size,
        "precision": precision,
        "steps_per_round": sizes.sync_steps,
        "ms_per_step": {name: median(t) for name, t in times.items()},
        "syncs_in_one_step_and_read_back": syncs,
        "note": "wall time of rounds of steps ending in one device sync, median of 3 rounds; "
        "syncs of one step plus the final read-back, counted with torch.cuda.set_sync_debug_mode "
        "(fp16's GradScaler inf check counts)",
        "table": {
            "columns": ["variant", "ms/step", "minus sync-every-step", "syncs in 1 step + read"],
            "rows": rows,
        },
    }


# ---------------------------------------------------------------------------------------------
# c. Reduced precision vs fp32


@torch.no_grad()
def settle_batchnorm(model: nn.Module, x: torch.Tensor, passes: int = 3) -> None:
    """BatchNorm running statistics from ``passes`` training-mode forwards (cumulative), so that
    eval mode sees activations of a sane scale (fresh statistics are mean 0, variance 1)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for _ in range(passes):
        model(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()


class StrictFP32:
    """TF32 off for convolutions and matrix products inside the block (restored after)."""

    def __enter__(self):
        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def precision_agreement_section(args, device) -> dict:
    from branches import get_branch
    from distributed.training.steps import head_probs

    sizes: Sizes = args.sizes
    branch = get_branch("facial")
    template, mcfg, _ = facial_trainee("sistcm", sizes, sizes.sizes[0])
    model = on_device(template, device)
    batch = facial_batch(sizes.agree_batch, sizes, sizes.sizes[0], device, seed=1)
    x = branch.inputs(mcfg, batch, device)
    settle_batchnorm(model, x)

    @torch.no_grad()
    def probs(precision: str) -> dict[str, torch.Tensor]:
        with autocast(device, precision):
            out = branch.outputs(model(x))
        return {h: head_probs({k: v.float() for k, v in out.items()}, h) for h in branch.heads}

    with StrictFP32():
        ref = probs("fp32")
    variants = {"tf32": "fp32", "fp16": "fp16", "bf16": "bf16"}
    probes: dict = {}
    results, rows = {}, []
    for name, precision in variants.items():
        reason = precision_skip(device, precision, probes)
        if reason:
            results[name] = {"status": f"skipped: {reason}"}
            rows.append([name, "-", None, None, results[name]["status"]])
            continue
        got = probs(precision)
        per_head = {
            h: {
                "argmax_agreement": float((got[h].argmax(1) == ref[h].argmax(1)).float().mean()),
                "max_abs_prob_diff": float((got[h] - ref[h]).abs().max()),
            }
            for h in branch.heads
        }
        results[name] = {"status": "ran", "heads": per_head}
        for h, v in per_head.items():
            rows.append([name, h, v["argmax_agreement"], v["max_abs_prob_diff"], "ran"])
    for r in rows:  # fractions and differences want more digits than the default
        r[2:4] = [None if v is None else f"{v:.4g}" for v in r[2:4]]
    return {
        "status": "ok",
        "model": "sistcm",
        "size": sizes.sizes[0],
        "batch": sizes.agree_batch,
        "reference": "fp32 with TF32 off",
        "variants": results,
        "note": "random weights, BatchNorm statistics from 3 batches; eval mode",
        "table": {
            "columns": ["vs strict fp32", "head", "argmax agreement", "max |dprob|", "status"],
            "rows": rows,
        },
    }


# ---------------------------------------------------------------------------------------------
# d. Gesture: representation and ACCM step, device vs CPU


def gesture_section(args, device) -> dict:
    from branches import DataInfo, get_branch
    from distributed.core.config import default_config

    sizes: Sizes = args.sizes
    branch = get_branch("gesture")
    tcfg = default_config(
        "gesture",
        rep_size=sizes.g_size,
        rep_length=sizes.g_length,
        width=sizes.g_width,
        se_reduction=sizes.g_se,
    )
    cfg = tcfg.model
    data = DataInfo(tuple(CLASSES), {}, num_joints=sizes.g_joints)
    rng = np.random.default_rng(0)
    b, t, j = sizes.g_batch, sizes.g_frames, sizes.g_joints
    lengths = rng.integers(max(t // 2, 1), t + 1, b)
    joints = rng.uniform(0, 500, (b, t, j, 2)).astype(np.float32)
    joints[np.arange(t)[None, :] >= lengths[:, None]] = 0.0  # padded as GestureCollate pads
    cpu = torch.device("cpu")
    batches = {
        cpu: {
            "joints": torch.from_numpy(joints),
            "lengths": torch.from_numpy(lengths),
            "y": torch.from_numpy(rng.integers(0, len(CLASSES), b)),
        }
    }
    batches[device] = batches[cpu]
    if device.type == "cuda":
        batches[device] = {k: v.pin_memory() for k, v in batches[cpu].items()}
    devices = [cpu] if device == cpu else [cpu, device]
    reps = {d: branch.inputs(cfg, batches[d], d) for d in devices}
    rep_ms = {
        str(d): median(time_steps(lambda d=d: branch.inputs(cfg, batches[d], d), d, 1, 5))
        for d in devices
    }
    rep_diff = float((reps[device].cpu() - reps[cpu]).abs().max())

    torch.manual_seed(0)
    template = branch.build_model(cfg, data)

    def trainee(d):
        model = on_device(template, d).train()
        opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
        y = batches[d]["y"].to(d, non_blocking=True)

        def step():
            out = branch.outputs(model(reps[d]))
            loss = branch.loss(cfg, out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss, out

        return model, step

    first = {}
    with StrictFP32():  # one step each from the same weights and input
        for d in devices:
            model, step = trainee(d)
            loss, out = step()
            params = torch.cat([p.detach().cpu().ravel() for p in model.parameters()])
            first[d] = (float(loss.detach()), out["fused"].detach().cpu(), params)
    logits_diff = float((first[device][1] - first[cpu][1]).abs().max())
    param_diff = float((first[device][2] - first[cpu][2]).abs().max())
    loss_diff = abs(first[device][0] - first[cpu][0])
    scale = max(1.0, float(first[cpu][1].abs().max()))
    equal = rep_diff == 0.0 and logits_diff <= 1e-4 * scale and loss_diff <= 1e-4
    step_ms = {}
    for d in devices:
        _, step = trainee(d)
        reps_n = sizes.cpu_repeats if d.type == "cpu" else sizes.repeats
        step_ms[str(d)] = median(time_steps(step, d, 1 if d.type == "cpu" else 3, reps_n))
    diffs = [f"{rep_diff:.3g}", f"{logits_diff:.3g}", f"{param_diff:.3g}"]
    rows = [[str(d), rep_ms[str(d)], step_ms[str(d)], *diffs] for d in devices if d != cpu]
    rows.insert(0, ["cpu", rep_ms["cpu"], step_ms["cpu"], "-", "-", "-"])
    return {
        "status": "ok" if equal else "failed",
        "error": None if equal else "device and CPU disagree beyond the tolerance",
        "shape": {"batch": b, "frames": t, "joints": j, "S": cfg.rep_size, "L": cfg.rep_length},
        "model": f"accm width {cfg.width}",
        "representation_max_abs_diff": rep_diff,
        "logits_max_abs_diff": logits_diff,
        "loss_abs_diff": loss_diff,
        "params_after_adam_step_max_abs_diff": param_diff,
        "tolerance": "maps exactly equal; logits and loss within 1e-4 (x max |logit| if > 1)",
        "representation_ms": rep_ms,
        "train_step_ms": step_ms,
        "cpu_threads": torch.get_num_threads(),
        "table": {
            "columns": [
                "device",
                "repr ms",
                "ACCM step ms",
                "repr diff",
                "logit diff",
                "param diff",
            ],
            "rows": rows,
        },
    }


# ---------------------------------------------------------------------------------------------
# e. Export, run on the device


def export_section(args, device) -> dict:
    import inspect

    from branches import DataInfo, get_branch
    from distributed import export
    from distributed.core.config import default_config
    from distributed.training.checkpoint import TrainedOn, load_model, save_model

    sizes: Sizes = args.sizes
    s = sizes.export_size
    cfg = default_config(
        "facial",
        clips=sizes.clips,
        frames=sizes.frames,
        lstm1=sizes.export_lstm[0],
        lstm2=sizes.export_lstm[1],
    )
    data = DataInfo(CLASSES, {"size": s})
    branch = get_branch("facial")
    torch.manual_seed(0)
    model = branch.build_model(cfg.model, data)
    x_cpu = branch.example_input(cfg.model, data, 4)
    settle_batchnorm(model, x_cpu)
    x = x_cpu.to(device)
    steps: dict[str, dict] = {}

    def attempt(name: str, fn: Callable):
        t0 = time.perf_counter()
        try:
            value = fn()
            steps[name] = {"ok": True}
        except Exception as err:
            value = None
            steps[name] = {"ok": False, "error": f"{type(err).__name__}: {first_line(err)}"}
        steps[name]["seconds"] = round(time.perf_counter() - t0, 2)
        return value

    def max_diff(a, b) -> float:
        return max(float((u.float().cpu() - v.float().cpu()).abs().max()) for u, v in zip(a, b))

    with tempfile.TemporaryDirectory(prefix="gpu-export-") as tmp:
        ckpt, out = os.path.join(tmp, "model.pt"), os.path.join(tmp, "model.pt2")
        save_model(ckpt, model, cfg, data, TrainedOn(), git_commit())
        kwargs = {}
        if "device" in inspect.signature(export.export_checkpoint).parameters:
            kwargs["device"] = str(device)  # the device-agnostic export, once it lands
        attempt("export_checkpoint", lambda: export.export_checkpoint(ckpt, out, **kwargs))
        refs = {}  # device type -> eager outputs
        for d in {torch.device("cpu"), device}:
            eager = export.ExportWrapper(load_model(ckpt, d).model, "facial", cfg.head).eval()
            with torch.no_grad(), StrictFP32():
                refs[d.type] = eager(x_cpu.to(d))
        ref = refs[device.type]
        results: dict = {}
        load_kwargs: dict = {}
        if steps["export_checkpoint"]["ok"]:
            if "device" in inspect.signature(export.load).parameters:
                load_kwargs["device"] = str(device)
            fn = attempt("load", lambda: export.load(out, **load_kwargs)[0])
            program = attempt("torch.export.load", lambda: torch.export.load(out))

            def run_loaded():
                with torch.no_grad(), StrictFP32():
                    return fn(x if load_kwargs else x_cpu)

            def run_moved():  # the project's file, its module moved to the device with .to()
                with torch.no_grad(), StrictFP32():
                    return program.module().to(device)(x)

            def run_pass():  # torch's own pass that rewrites the program's devices
                from torch.export.passes import move_to_device_pass

                with torch.no_grad(), StrictFP32():
                    return move_to_device_pass(program, device).module()(x)

            def run_with_grad():  # a caller that forgets no_grad (eval mode, grads on)
                return program.module().to(device)(x)

            if fn is not None:
                got = attempt("run via distributed.export.load", run_loaded)
                if got is not None:  # against the eager model on the device it ran on
                    results["load_max_abs_diff"] = max_diff(got, refs[got[0].device.type])
            if program is not None:
                got = attempt("run module().to(device)", run_moved)
                if got is not None:
                    results["moved_max_abs_diff"] = max_diff(got, ref)
                    results["moved_argmax_agreement"] = float(
                        (got[0].argmax(1).cpu() == ref[0].argmax(1).cpu()).float().mean()
                    )
                got = attempt("run move_to_device_pass", run_pass)
                if got is not None:
                    results["pass_max_abs_diff"] = max_diff(got, ref)
                attempt("run, grad enabled (informative)", run_with_grad)
    # The finding that matters: the exported file runs on the device and matches the eager model.
    ok = steps.get("run module().to(device)", {}).get("ok") and steps.get(
        "run via distributed.export.load", {}
    ).get("ok")
    close = ok and results.get("moved_max_abs_diff", 1.0) <= 1e-4
    close = close and results.get("load_max_abs_diff", 1.0) <= 1e-4
    error = None
    if not close:
        bad = [
            f"{k}: {v['error']}" for k, v in steps.items() if not v["ok"] and "informative" not in k
        ]
        error = "; ".join(bad) or "exported and eager outputs differ by more than 1e-4"
    rows = [[name, "ok" if v["ok"] else v["error"], v["seconds"]] for name, v in steps.items()]
    for key in ("load_max_abs_diff", "moved_max_abs_diff", "pass_max_abs_diff"):
        if key in results:
            rows.append([key, f"{results[key]:.3g}", None])
    return {
        "status": "ok" if close else "failed",
        "error": error,
        "model": f"sistcm C={sizes.clips} K={sizes.frames} S={s} H1/H2={sizes.export_lstm}",
        "export_kwargs": kwargs,
        "load_kwargs": load_kwargs,
        "steps": steps,
        **results,
        "note": "'run via distributed.export.load' feeds the device input when load() takes a "
        "device, else the CPU input (the program as exported); diffs are against the eager "
        "model on the device the outputs are on, TF32 off",
        "table": {"columns": ["step", "result", "s"], "rows": rows},
    }


# ---------------------------------------------------------------------------------------------
# f. Collective and epoch loop (the lead's), and the shard writer the epoch loop reads


class ProcessGroupHost:
    """The training loop's host (``distributed.training.loop.Host``) in a ``torch.distributed``
    group of
    this one process: the model wrapped in DDP (its gradients all-reduced through the group),
    streamed folds read whole, reports kept."""

    def __init__(self, folds: dict, device: torch.device):
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.folds, self.device, self.history = folds, device, []

    def shard(self, key: str):
        return self.folds[key].shard(self.rank, self.world)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model.to(self.device), device_ids=ids)

    def restore(self):
        return None

    def report(self, metrics: dict, directory) -> None:
        self.history.append(metrics)


def facial_fold(root: str, ids):
    """A streamed training fold over every row of a shard folder (the project's reader)."""
    from branches import get_branch
    from datasets import shards
    from distributed.training.stream import StreamedFold

    columns = get_branch("facial").columns
    groups = shards.shard_row_groups(root, columns)
    return StreamedFold.plan(groups, columns, ids, split=True)


def loop_config(sizes: Sizes, size: int, batch: int, epochs: int, threads: int) -> dict:
    """The training loop's config for SISTCM + TLSTM on :func:`write_clip_shards` rows."""
    from branches import DataInfo
    from distributed.core.config import default_config

    cfg = default_config(
        "facial", clips=sizes.clips, frames=sizes.frames, lstm1=sizes.lstm1, lstm2=sizes.lstm2,
        batch_size=batch, epochs=epochs, precise_bn=False,
    )  # fmt: skip
    return {
        "train": cfg.to_dict(),
        "data": DataInfo(CLASSES, {"size": size}).to_json(),
        "folds": [{"train": "train0", "val": None, "fold": {}}],
        "threads": threads,
        "model_writer": None,
        "checkpoint_every": 10**9,  # the last epoch's checkpoint only
    }


def collective_section(args, device) -> dict:
    """All-reduces through the training loop's own code path, on the device: a process group of
    one with the backend the Ray Train workers use (``cpu:gloo,cuda:nccl`` on GPUs), the real
    loop on a DDP-wrapped SISTCM (its gradients go through the group from DDP's C++ reducer) and
    its epoch statistics (one ``all_reduce`` per epoch, recorded with its device and dtype); plus
    a CPU tensor through the same group."""
    import torch.distributed as dist

    from distributed.training.loop import process_group_backend, train_folds

    sizes: Sizes = args.sizes
    backend = process_group_backend(device.type == "cuda")
    seen: list[str] = []
    real = dist.all_reduce

    def all_reduce(tensor, *a, **kw):
        seen.append(f"{tensor.device.type}/{str(tensor.dtype).replace('torch.', '')}")
        return real(tensor, *a, **kw)

    with tempfile.TemporaryDirectory(prefix="gpu-pg-") as tmp:
        rows = 4 * sizes.loop_batch_small
        written = write_clip_shards(tmp, rows, sizes.shard_size, sizes.clips * sizes.frames)
        if device.type == "cuda":
            torch.cuda.set_device(device.index or 0)
        dist.init_process_group(backend, init_method=f"file://{tmp}/pg", rank=0, world_size=1)
        dist.all_reduce = all_reduce
        try:
            host = ProcessGroupHost({"train0": facial_fold(tmp, written.ids)}, device)
            config = loop_config(sizes, sizes.shard_size, sizes.loop_batch_small, 1, 1)
            train_folds(config, host)
            cpu = torch.ones(3)
            dist.all_reduce(cpu)  # a CPU tensor: the gloo half of the backend
            ok_cpu = bool(torch.equal(cpu, torch.ones(3)))
        finally:
            dist.all_reduce = real
            dist.destroy_process_group()
    m = host.history[-1]
    stats_ok = m["train_n"] == rows
    on_device = [d for d in seen[:-1] if d.startswith(device.type)]
    ok = stats_ok and ok_cpu and len(on_device) == len(seen) - 1 and seen[-1].startswith("cpu")
    kinds = Counter(seen)
    return {
        "status": "ok" if ok else "failed",
        "error": None if ok else f"collectives {dict(kinds)}, train_n {m['train_n']} of {rows}",
        "backend": backend,
        "collectives": dict(kinds),
        "table": {
            "columns": ["what", "result"],
            "rows": [
                ["backend", backend],
                [
                    "all_reduce calls (device/dtype)",
                    ", ".join(f"{k} x{v}" for k, v in kinds.items()),
                ],
                ["epoch statistics summed (train_n)", f"{m['train_n']} of {rows}"],
                ["CPU tensor through the same group", str(ok_cpu)],
            ],
        },
    }


def epoch_loop_section(args, device) -> dict:
    """The real epoch loop (``distributed.training.loop.train_folds`` on the in-process host) over
    ``loop_clips`` generated videos in Parquet shards, read by the streamed reader: videos/s of
    the last epoch against the same model's training step alone on one pinned batch, and the
    epoch's data-wait fraction (time the loop waited for the next batch / epoch time)."""
    from distributed.training.local_hosts import LocalHost
    from distributed.training.loop import resolve_precision, train_folds

    sizes: Sizes = args.sizes
    n, size, batch = sizes.loop_clips, sizes.loop_size, sizes.loop_batch
    threads = max(1, min(8, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 1
    precision = resolve_precision("auto", device)
    with tempfile.TemporaryDirectory(prefix="gpu-loop-") as tmp:
        t0 = time.perf_counter()
        written = write_clip_shards(tmp, n, size, sizes.clips * sizes.frames)
        write_s = time.perf_counter() - t0
        host = LocalHost({"train0": facial_fold(tmp, written.ids)}, None, device)
        train_folds(loop_config(sizes, size, batch, sizes.loop_epochs, threads), host)
    last = host.history[-1]
    loop_rate = last["train_n"] / last["epoch_seconds"]
    # the same step alone, on one batch already in pinned memory (train_steps' method)
    template, mcfg, forward_loss = facial_trainee("sistcm", sizes, size)
    step, _ = make_step(on_device(template, device), mcfg, forward_loss,
                        facial_batch(batch, sizes, size, device), device, precision)  # fmt: skip
    step_ms = median(time_steps(step, device, sizes.warmup, sizes.repeats))
    step_rate = batch / (step_ms / 1e3)
    ratio = loop_rate / step_rate
    wait = last["data_wait_fraction"]
    rows = [
        ["videos (C x K frames each, S px)", f"{n} ({sizes.clips} x {sizes.frames}, {size} px)"],
        ["shards written",
         f"{len(written.files)} files, {written.payload_bytes / 2**20:.0f} MiB, {write_s:.1f} s"],
        ["precision, batch", f"{precision}, {batch}"],
        ["epochs (seconds each)", ", ".join(f"{h['epoch_seconds']:.2f}" for h in host.history)],
        ["last epoch: videos/s", fmt(loop_rate)],
        ["step alone: videos/s", fmt(step_rate)],
        ["end-to-end / step alone", f"{ratio:.2f} (target >= 0.90)"],
        ["data wait fraction", f"{wait:.3f} (target < 0.05)"],
    ]  # fmt: skip
    return {
        "status": "ok",
        "videos": n,
        "size": size,
        "batch": batch,
        "precision": precision,
        "epoch_seconds": [h["epoch_seconds"] for h in host.history],
        "data_wait_fraction": [h["data_wait_fraction"] for h in host.history],
        "loop_videos_per_s": loop_rate,
        "step_videos_per_s": step_rate,
        "loop_vs_step": ratio,
        "targets": {"loop_vs_step_ge_0.90": ratio >= 0.9, "data_wait_lt_0.05": wait < 0.05},
        "table": {"columns": ["what", "value"], "rows": rows},
    }


@dataclass(frozen=True)
class ClipShards:
    """What :func:`write_clip_shards` wrote: the folder, its shard files and the rows' ids."""

    root: str
    files: tuple[str, ...]
    ids: tuple[str, ...]  # sorted; also the order of the rows in the files
    classes: tuple[str, ...]
    payload_bytes: int


def clip_id(i: int) -> str:
    """Zero-padded, so that id order is index order (row groups cover narrow id ranges)."""
    return f"clip{i:07d}"


def clip_frames(i: int, size: int, frames: int, seed: int = 0) -> np.ndarray:
    """Synthetic (frames, S, S, 3) uint8 face crops of clip ``i``, reproducible from (seed, i)."""
    rng = np.random.default_rng([seed, i])
    return rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def write_clip_shards(
    directory, n_clips: int, size: int, frames: int, *, per_shard: int = 64, seed: int = 0
) -> ClipShards:
    """Write ``n_clips`` synthetic facial rows as the preprocessing job stores them: id-sorted
    ``shard-NNNNN.parquet`` files of :data:`datasets.FACIAL_SCHEMA` (``per_shard`` rows
    each, written atomically) and a ``manifest.json`` (no protocol: plan folds from the ids).
    Labels cycle through the 7 CK+ classes, subjects through 20; clip ``i``'s frames are
    :func:`clip_frames` ``(i, size, frames, seed)``."""
    from branches.facial.data import FacialOptions
    from datasets import shards
    from datasets.manifest import Counts, Manifest, write_manifest

    root = str(directory)
    os.makedirs(root, exist_ok=True)
    ids = tuple(clip_id(i) for i in range(n_clips))
    files = []
    for k, start in enumerate(range(0, n_clips, per_shard)):
        rows = [
            FacialRow(
                id=ids[i],
                subject=f"s{i % 20:03d}",
                label=i % len(CLASSES),
                label_name=CLASSES[i % len(CLASSES)],
                frames=clip_frames(i, size, frames, seed),
                face_fraction=1.0,
                centre_cropped=False,
                source=f"synthetic/{ids[i]}",
            )
            for i in range(start, min(start + per_shard, n_clips))
        ]
        files.append(shards.shard_path(root, k))
        shards.write_shard(facial_table(rows), files[-1])
    per_class = Counter(CLASSES[i % len(CLASSES)] for i in range(n_clips))
    counts = Counts(n_clips, n_clips, 0, 0, dict(per_class), min(20, n_clips))
    options = asdict(FacialOptions(size=size))
    manifest = Manifest("facial", CLASSES, options, counts, None, source="benchmarks/gpu.py")
    write_manifest(root, replace(manifest, git_commit=git_commit()))
    return ClipShards(root, tuple(files), ids, CLASSES, n_clips * frames * size * size * 3)


def clip_shards_section(args, device) -> dict:
    """:func:`write_clip_shards` read back with pyarrow: row count, ids, one payload, manifest."""
    import pyarrow.parquet as pq

    from datasets import shards
    from datasets.manifest import read_manifest

    sizes: Sizes = args.sizes
    n, s, k = sizes.shard_clips, sizes.shard_size, sizes.shard_frames
    with tempfile.TemporaryDirectory(prefix="gpu-shards-") as tmp:
        written = write_clip_shards(tmp, n, s, k, per_shard=5)
        tables = [pq.read_table(f) for f in shards.shard_files(tmp)]
        ids = [i for t in tables for i in t["id"].to_pylist()]
        pick = n // 2
        table = tables[pick // 5]
        row = table.slice(pick % 5, 1).to_pylist()[0]
        frames = facial_frames(row["frames"], row["n_frames"], row["size"])
        manifest = read_manifest(tmp)
        checks = {
            "rows": sum(t.num_rows for t in tables) == n,
            "ids sorted and unique": ids == sorted(set(ids)) == list(written.ids),
            "one payload": row["id"] == clip_id(pick)
            and np.array_equal(frames, clip_frames(pick, s, k)),
            "label": row["label"] == pick % len(CLASSES),
            "manifest": manifest.counts.written == n and manifest.options["size"] == s,
        }
    return {
        "status": "ok" if all(checks.values()) else "failed",
        "error": None if all(checks.values()) else f"checks failed: {checks}",
        "files": len(written.files),
        "rows": n,
        "checks": checks,
        "table": {"columns": ["check", "passed"], "rows": [[c, str(v)] for c, v in checks.items()]},
    }


# ---------------------------------------------------------------------------------------------
# Driver

SECTIONS: dict[str, tuple[str, Callable]] = {  # name -> (issue letter, function), in run order
    "clip_shards": ("f", clip_shards_section),
    "precision_agreement": ("c", precision_agreement_section),
    "host_sync": ("b", host_sync_section),
    "gesture": ("d", gesture_section),
    "export": ("e", export_section),
    "collective": ("f", collective_section),
    "epoch_loop": ("f", epoch_loop_section),
    "train_steps": ("a", train_steps_section),  # last: it takes what is left of the budget
}


def git_commit() -> str:
    from distributed.core.runtime import git_commit as commit  # (Ray-free)

    return commit()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    import pyarrow

    env = {
        "device": str(device),
        "device_name": cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": None,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            gpus=torch.cuda.device_count(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
        try:
            version = torch.cuda.nccl.version()
            env["nccl"] = (
                ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
            )
        except Exception as err:  # a build without NCCL
            env["nccl"] = f"unavailable ({first_line(err)})"
        env["peak_bf16_tflops"], env["peak_entry"] = peak_tflops(props.name)
    return env


def modules_report() -> dict:
    std = set(sys.stdlib_module_names)
    tops = {m.split(".")[0] for m in sys.modules}
    third = sorted(t for t in tops if t not in std and not t.startswith("_"))
    return {
        "ray_imported": "ray" in sys.modules,
        "not_allowed_imported": [m for m in NOT_ALLOWED if m in sys.modules],
        "third_party": third,
        "note": "pyarrow imports pandas by itself where pandas is installed (Table.from_pydict); "
        "without pandas, as on the GPU machine, it does without",
    }


def clean(obj):
    """JSON-safe: non-finite floats become None, tuples lists, anything else its str."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return str(obj)


def write_json(path: str | None, report: dict) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(clean(report), f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def run_section(name: str, args, device) -> dict:
    t0 = time.perf_counter()
    try:
        out = SECTIONS[name][1](args, device)
    except Exception as err:
        out = {
            "status": "failed",
            "error": f"{type(err).__name__}: {first_line(err)}",
            "traceback": traceback.format_exc(limit=-8),
        }
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/gpu.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", help="write the summary here (rewritten after every section)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (also used without CUDA)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds from the start by which train_steps stops starting cases "
        "(default 300 at full size, none at smoke size)",
    )
    p.add_argument("--sections", help=f"comma-separated subset of {', '.join(SECTIONS)}")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 at smoke size: on a shared, loaded machine OpenMP "
        "threads waiting on each other made tiny steps 10-20x slower; torch's default otherwise)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device")
        return 2
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    smoke = args.smoke or device.type != "cuda"
    args.sizes = SMOKE if smoke else FULL
    budget = args.budget if args.budget is not None else (None if smoke else 300.0)
    args.deadline = None if budget is None else T_START + budget
    threads = args.threads if args.threads is not None else (1 if smoke else None)
    if threads is not None:
        torch.set_num_threads(threads)
    names = list(SECTIONS)
    if args.sections:
        names = [n.strip() for n in args.sections.split(",") if n.strip()]
        unknown = sorted(set(names) - set(SECTIONS))
        if unknown:
            print(f"error: unknown sections {unknown}; choose from {list(SECTIONS)}")
            return 2
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA context before the clock of any section
    env = environment(device)
    print(f"benchmarks/gpu.py: {env['device_name']} ({device}), torch {env['torch']}, "
          f"CUDA {env['cuda']}, cuDNN {env['cudnn']}, NCCL {env['nccl']}")  # fmt: skip
    print(f"sizes: {'smoke' if smoke else 'full'}; budget: {budget} s; git {env['git_commit']}")
    if smoke and not args.smoke:
        print("(no CUDA device: every section at the smoke sizes)")
    report = {
        "benchmark": "benchmarks/gpu.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "smoke": smoke,
        "budget_s": budget,
        "environment": env,
        "sizes": asdict(args.sizes),
        "sections": {},
    }
    for name in names:
        letter = SECTIONS[name][0]
        out = run_section(name, args, device)
        report["sections"][name] = out
        table = out.get("table")
        title = f"({letter}) {name}: {out['status']} in {out['seconds']} s"
        if table:
            print_table(title, table["columns"], table["rows"])
        else:
            print(f"\n{title}")
        for key in ("note", "error"):
            if out.get(key):
                print(f"  {key}: {out[key]}")
        write_json(args.json, report)
    failed = [n for n, out in report["sections"].items() if out["status"] == "failed"]
    report.update(
        failed=failed, modules=modules_report(), total_seconds=time.perf_counter() - T_START
    )
    write_json(args.json, report)
    mods = report["modules"]
    print(f"\n{len(names) - len(failed)} of {len(names)} sections not failed"
          f"{' (failed: ' + ', '.join(failed) + ')' if failed else ''}; "
          f"{report['total_seconds']:.1f} s; ray imported: {mods['ray_imported']}; "
          f"not allowed imported: {mods['not_allowed_imported'] or 'none'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
