"""Body-gesture branch: the joint-representation build, vectorised vs a per-frame, per-joint Python
loop of the paper's rule, and the build's share of one ACCM training step on the same batch.

    python benchmarks/gesture.py              # B=64 T=300 J=28 S=64 L=300, W=128 (~1-2 min)
    python benchmarks/gesture.py --threads 1  # torch on one thread
    python benchmarks/gesture.py --smoke      # tiny sizes, a few seconds

Measured in one run, on the same random batch (coordinates in [0, 500), every joint present):

1. the loop: per sequence, per resampled frame (n = T), per joint, the paper's normalisation
   (Wei et al. 2024, §2.1: ``p = int(q)``, a 5-unit border on each side, ``scale = min(S / (hi_x -
   lo_x), S / (hi_y - lo_y))``, ``n = int((p - lo) * scale)``) and the "timeline" increments
   ``X[j, x_j(t), t] += j + 1``, in plain Python on each frame's ``tolist()`` (best of 2);
2. ``build_representation(..., "timeline", S, L)`` with a fresh float32 output, and the same into
   a reused ``out=`` buffer (interleaved; best and median of the repeats);
3. obtaining the zeroed float32 (B, 2J, S, L) output alone: ``torch.zeros`` and ``np.zeros``;
4. one ACCM training step (forward, backward, Adam; W=128) on the built batch (best of the steps).

The vectorised result must equal the loop's element by element, or the script stops. Prints the
ratio loop / vectorised (target >= 50x) and the build's share of the training step (target
<= 10%), with the load average before and after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

_util.ensure_repo_on_path()  # this repository's `datasets`, not an installed one

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datasets.representations import build_representation, representation_shape  # noqa: E402
from models.accm import accm  # noqa: E402

RATIO_TARGET = 50.0
SHARE_TARGET = 0.10


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run (defaults: the paper's S = 64, L = 300, W = 128)."""

    batch: int = 64
    frames: int = 300
    joints: int = 28
    size: int = 64
    length: int = 300
    width: int = 128
    steps: int = 2
    repeats: int = 15
    loop_repeats: int = 2


def loop_timeline(seqs: list[np.ndarray], size: int, length: int, border: int = 5) -> np.ndarray:
    """The paper's rule frame by frame and joint by joint: (B, 2J, S, L) float32 maps."""
    J = seqs[0].shape[1]
    out = np.zeros((len(seqs), 2 * J, size, length), np.float32)
    for b, seq in enumerate(seqs):
        n = len(seq)
        for t in range(length):
            src = t * n // length if n >= length else min(t, n - 1)
            px, py = [], []
            for x, y in seq[src].tolist():  # (J, 2) -> J Python pairs
                px.append(int(x))
                py.append(int(y))
            lo_x, hi_x = min(px) - border, max(px) + border
            lo_y, hi_y = min(py) - border, max(py) + border
            scale = min(size / (hi_x - lo_x), size / (hi_y - lo_y))
            for j in range(J):
                out[b, 2 * j, int((px[j] - lo_x) * scale), t] += j + 1
                out[b, 2 * j + 1, int((py[j] - lo_y) * scale), t] += j + 1
    return out


def timings(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_representation(cfg: BenchConfig) -> tuple[float, torch.Tensor]:
    """Prints the representation figures; returns (best build time, the built batch)."""
    rng = np.random.default_rng(0)
    joints = rng.uniform(0, 500, size=(cfg.batch, cfg.frames, cfg.joints, 2)).astype(np.float32)
    padded = torch.from_numpy(joints)
    lengths = torch.full((cfg.batch,), cfg.frames)
    shape = representation_shape("timeline", cfg.batch, cfg.joints, cfg.size, cfg.length)
    buf = torch.empty(shape)

    def fast():
        return build_representation(padded, lengths, "timeline", cfg.size, cfg.length)

    def fast_out():
        return build_representation(padded, lengths, "timeline", cfg.size, cfg.length, out=buf)

    built = fast()
    slow = None

    def loop():
        nonlocal slow
        slow = loop_timeline(list(joints), cfg.size, cfg.length)

    t_slow = min(timings(loop, cfg.loop_repeats))
    if not np.array_equal(built.numpy(), slow):
        bad = int((built.numpy() != slow).sum())
        raise SystemExit(f"ABORT: the vectorised build differs from the loop at {bad} elements")
    fast_out()
    if not torch.equal(buf, built):
        raise SystemExit("ABORT: the out= build differs from the fresh one")
    t_fast, t_out = [], []
    for _ in range(cfg.repeats):  # interleaved, so that load spikes hit both alike
        t_fast += timings(fast, 1)
        t_out += timings(fast_out, 1)
    numel = int(np.prod(shape))
    t_tz = timings(lambda: torch.zeros(numel), cfg.repeats)
    t_nz = timings(lambda: torch.from_numpy(np.zeros(numel, np.float32))[::1024].fill_(0), 3)
    best, med = min(t_fast), statistics.median(t_fast)
    print(
        f"representation 'timeline' B={cfg.batch} T={cfg.frames} J={cfg.joints} S={cfg.size} "
        f"L={cfg.length} -> {shape} float32 ({numel * 4 / 2**20:.0f} MiB), "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"  python loop, paper's rule (best of {cfg.loop_repeats}): {t_slow * 1e3:9.1f} ms")
    print(
        f"  vectorised, fresh output (best / median of {cfg.repeats}): {best * 1e3:7.1f} / "
        f"{med * 1e3:.1f} ms   identical to the loop: True"
    )
    print(
        f"  vectorised, reused out= buffer (best / median): {min(t_out) * 1e3:9.1f} / "
        f"{statistics.median(t_out) * 1e3:.1f} ms"
    )
    print(
        f"  zeroed output alone: torch.zeros {min(t_tz) * 1e3:.1f} ms, np.zeros + first touch "
        f"{min(t_nz) * 1e3:.1f} ms (huge pages), zero_() of a reused buffer "
        f"{min(timings(buf.zero_, cfg.repeats)) * 1e3:.1f} ms"
    )
    ratio = t_slow / best
    verdict = "met" if ratio >= RATIO_TARGET else "MISSED"
    print(
        f"  speed-up loop / vectorised: {ratio:.1f}x (best), {t_slow / med:.1f}x (median); "
        f"out=: {t_slow / min(t_out):.1f}x   target >= {RATIO_TARGET:.0f}x: {verdict}"
    )
    return best, built


def bench_train_step(cfg: BenchConfig, x: torch.Tensor, t_build: float) -> None:
    torch.manual_seed(0)
    cin = x.shape[1]
    model = accm(num_classes=8, in_channels=cin, width=cfg.width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.randint(0, 8, (x.shape[0],))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t = min(timings(step, cfg.steps))
    share = t_build / t
    verdict = "met" if share <= SHARE_TARGET else "MISSED"
    print(
        f"ACCM train step on the same batch B={x.shape[0]} W={cfg.width} Cin={cin} "
        f"{tuple(x.shape[2:])}: {t * 1e3:.0f} ms (best of {cfg.steps}, forward + backward + Adam)"
    )
    print(f"  build / step: {share * 100:.2f}%   target <= {SHARE_TARGET * 100:.0f}%: {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = BenchConfig()
    if args.smoke:
        cfg = BenchConfig(batch=4, frames=60, size=32, length=60, width=16, steps=1, repeats=2)
    print(f"before: {_util.machine_load()}")
    t_build, x = bench_representation(cfg)
    bench_train_step(cfg, x, t_build)
    print(f"after: {_util.machine_load()}")


if __name__ == "__main__":
    main()
