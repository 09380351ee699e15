"""SISTCM vs a plain 2D ResNet-18 on the same frames: training-step and inference time on CPU.

Both backbones take the same videos (B, C, K, 3, S, S); the plain net runs the B*C*K frames as one
2D batch (and averages the K frame features per clip), SISTCM additionally runs every block's
conv2 on the two super images. Measurements are interleaved (plain, SISTCM, plain, ...) after a
warm-up, and the median of the repeats is reported with the ratio SISTCM / plain.

    .venv/bin/python benchmarks/facial_models.py          # C=5, K in {2, 4}, B=2, S in {112, 224}
    .venv/bin/python benchmarks/facial_models.py --quick  # S=112 only, fewer repeats (~20 s)
    .venv/bin/python benchmarks/facial_models.py --smoke  # one toy case (B=1 C=2 K=2 S=32)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.sistcm import FrameResNet, resnet18_frames, sistcm_resnet18  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One benchmark point."""

    batch: int
    clips: int
    frames: int
    size: int


def _train_step(net: FrameResNet, opt: torch.optim.Optimizer, x: torch.Tensor, w: torch.Tensor):
    opt.zero_grad(set_to_none=True)
    loss = (net(x) @ w).square().mean()  # (B*C,) -> scalar; a stand-in for the head's loss
    loss.backward()
    opt.step()


def _infer(net: FrameResNet, x: torch.Tensor) -> None:
    with torch.inference_mode():
        net(x)


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds): CPU time is less sensitive to other jobs' load."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(case: Case, repeats: int, warmup: int, channels_last: bool) -> dict[str, float]:
    """Median wall and CPU seconds per train step / inference call, plain net and SISTCM.

    Keys ``{plain,sistcm}_{train,infer}`` (wall) and the same with ``_cpu`` appended.
    """
    torch.manual_seed(0)
    nets = {
        "plain": resnet18_frames(channels_last=channels_last),
        "sistcm": sistcm_resnet18(channels_last=channels_last),
    }
    opts = {
        name: torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        for name, net in nets.items()
    }
    shape = (case.batch, case.clips, case.frames, 3, case.size, case.size)
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    w = torch.randn(512)
    times: dict[str, list[float]] = {
        f"{n}_{m}{c}": [] for n in nets for m in ("train", "infer") for c in ("", "_cpu")
    }
    for i in range(warmup + repeats):
        order = list(nets) if i % 2 == 0 else list(reversed(nets))
        for mode in ("train", "infer"):
            for name in order:
                net = nets[name].train(mode == "train")
                if mode == "train":
                    t = _timed(lambda net=net, name=name: _train_step(net, opts[name], x, w))
                else:
                    t = _timed(lambda net=net: _infer(net, x))
                if i >= warmup:
                    times[f"{name}_{mode}"].append(t[0])
                    times[f"{name}_{mode}_cpu"].append(t[1])
    return {key: statistics.median(v) for key, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S=112 only, 3 repeats")
    parser.add_argument(
        "--smoke", action="store_true", help="one toy case, 1 repeat, no warm-up (a test runs it)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nchw", action="store_true", help="contiguous NCHW instead of NHWC")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warmup = 1
    if args.smoke:
        repeats, warmup = args.repeats or 1, 0
        cases = [Case(1, 2, 2, 32)]
    else:
        repeats = args.repeats or (3 if args.quick else 5)
        sizes = (112,) if args.quick else (112, 224)
        cases = [Case(2, 5, k, s) for s in sizes for k in (2, 4)]
    layout = "NCHW" if args.nchw else "channels_last"
    print(f"torch {torch.__version__}, {args.threads} threads, {layout}, median of {repeats}")
    print(
        "times: wall-clock medians; ratio = SISTCM / plain (wall), cpu = same on process CPU time"
    )
    header = (
        f"{'B':>2} {'C':>2} {'K':>2} {'S':>4} {'frames':>6} | {'train plain':>11} "
        f"{'train SISTCM':>12} {'ratio':>6} {'cpu':>6} | {'infer plain':>11} {'infer SISTCM':>12} "
        f"{'ratio':>6} {'cpu':>6}"
    )
    print(header)
    print("-" * len(header))
    for case in cases:
        r = measure(case, repeats, warmup=warmup, channels_last=not args.nchw)
        n = case.batch * case.clips * case.frames
        print(
            f"{case.batch:>2} {case.clips:>2} {case.frames:>2} {case.size:>4} {n:>6} | "
            f"{r['plain_train']:>10.3f}s {r['sistcm_train']:>11.3f}s "
            f"{r['sistcm_train'] / r['plain_train']:>5.2f}x "
            f"{r['sistcm_train_cpu'] / r['plain_train_cpu']:>5.2f}x | "
            f"{r['plain_infer']:>10.3f}s {r['sistcm_infer']:>11.3f}s "
            f"{r['sistcm_infer'] / r['plain_infer']:>5.2f}x "
            f"{r['sistcm_infer_cpu'] / r['plain_infer_cpu']:>5.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
