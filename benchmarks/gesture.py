"""Body-gesture branch timings: representation build (vectorised vs a per-frame Python loop like
the reference's) and one ACCM training step.

Run from the repository root: ``python benchmarks/gesture.py`` (about a minute on 2 CPU cores;
``--smoke`` is a few seconds). Prints what it measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this repository's `datasets`

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datasets.representations import build_representation  # noqa: E402
from models.accm import accm  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run (defaults: the paper's S = 64, L = 300, W = 128)."""

    batch: int = 64
    frames: int = 300
    joints: int = 28
    size: int = 64
    length: int = 300
    train_batch: int = 16
    width: int = 128
    steps: int = 2
    repeats: int = 3


def loop_timeline(seqs: list[np.ndarray], size: int, length: int, margin: int = 5) -> np.ndarray:
    """The reference's way: per sequence and frame numpy min/max, then a Python loop over joints."""
    J = seqs[0].shape[1]
    out = np.zeros((len(seqs), 2 * J, size, length), np.float32)
    for b, q in enumerate(seqs):
        n = len(q)
        if n >= length:
            idx = [i * n // length for i in range(length)]
        else:
            idx = [min(i, n - 1) for i in range(length)]
        for t in range(length):
            f = q[idx[t], :, :2]
            lo, hi = f.min(axis=0), f.max(axis=0)
            scale = np.float32(size - margin) / max(hi[0] - lo[0], hi[1] - lo[1])
            for j in range(J):
                x = min(int((f[j, 0] - lo[0]) * scale), size - 1)
                y = min(int((f[j, 1] - lo[1]) * scale), size - 1)
                out[b, 2 * j, x, t] += j + 1
                out[b, 2 * j + 1, y, t] += j + 1
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_representation(cfg: BenchConfig) -> None:
    rng = np.random.default_rng(0)
    joints = rng.uniform(0, 500, size=(cfg.batch, cfg.frames, cfg.joints, 2)).astype(np.float32)
    seqs = list(joints)
    padded = torch.from_numpy(joints)
    lengths = torch.full((cfg.batch,), cfg.frames)

    def fast():
        return build_representation(padded, lengths, "timeline", cfg.size, cfg.length)

    fast()  # warm-up
    t_fast = best_of(fast, cfg.repeats)
    start = time.perf_counter()
    slow = loop_timeline(seqs, cfg.size, cfg.length)
    t_slow = time.perf_counter() - start
    same = np.array_equal(fast().numpy(), slow)
    numel = cfg.batch * 2 * cfg.joints * cfg.size * cfg.length
    t_alloc = best_of(lambda: torch.zeros(numel), cfg.repeats)
    print(
        f"representation 'timeline' B={cfg.batch} T={cfg.frames} J={cfg.joints} S={cfg.size} "
        f"L={cfg.length} -> ({cfg.batch}, {2 * cfg.joints}, {cfg.size}, {cfg.length}) float32 "
        f"({numel * 4 / 2**20:.0f} MiB), torch threads={torch.get_num_threads()}"
    )
    print(f"  python loop (1 run)      : {t_slow * 1e3:9.1f} ms")
    print(f"  vectorised (best of {cfg.repeats})  : {t_fast * 1e3:9.1f} ms   identical: {same}")
    print(f"  speed-up                 : {t_slow / t_fast:9.1f}x")
    print(f"  of which torch.zeros(out): {t_alloc * 1e3:9.1f} ms (fresh pages; the floor)")


def bench_train_step(cfg: BenchConfig) -> None:
    torch.manual_seed(0)
    cin = 2 * cfg.joints
    model = accm(num_classes=8, in_channels=cin, width=cfg.width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(cfg.train_batch, cin, cfg.size, cfg.length)
    y = torch.randint(0, 8, (cfg.train_batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t = best_of(step, cfg.steps)
    print(
        f"ACCM train step B={cfg.train_batch} W={cfg.width} Cin={cin} {cfg.size}x{cfg.length}: "
        f"{t * 1e3:.0f} ms (best of {cfg.steps}, forward + backward + Adam)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = BenchConfig()
    print(f"load average before the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.smoke:
        cfg = BenchConfig(batch=4, frames=60, size=32, length=60, width=16, steps=1, repeats=1)
    bench_representation(cfg)
    bench_train_step(cfg)


if __name__ == "__main__":
    main()
