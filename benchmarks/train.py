"""Training benchmark (issue 5): data waiting, 2 workers vs 1, clips per second per worker.

    .venv/bin/python benchmarks/train.py            # 24 videos, S = 112, 3 epochs (~3-4 min)
    .venv/bin/python benchmarks/train.py --quick    # 16 videos, S = 64, 2 epochs (~2-3 min)
    .venv/bin/python benchmarks/train.py --smoke    # the same path at toy sizes, 1 epoch

Everything runs through the real path: synthetic MJPEG videos are written and preprocessed with
``python -m distributed.preprocess``'s job into shards, the fold of every row is read once
(``distributed.training.launch.prepare_datasets``: a fold under the materialisation budget becomes
a Ray
dataset in the object store), then ``distributed.training.launch.fit_folds`` fits SISTCM + TLSTM
with Ray
Train (TorchTrainer, DDP over gloo, the dataset split among the workers and consumed with
``iter_torch_batches(prefetch_batches=2)`` and the per-epoch clip-sampling collate) on one local
Ray instance with 2 CPUs, first with 1 worker, then with 2.

Config: the paper's clips C = 5 and clip length K = 2, the demo's small LSTMs (H1 = 32, H2 = 16:
the cheapest step, so the least flattering for the data-wait figure), SGD, a global batch of
4 (``fit_folds`` splits it: 2 rows per worker with 2 workers).
Measured per epoch by the worker loop (``Fit.history``):

- data-wait fraction: time rank 0 spends in ``next(batch iterator)`` / its training-epoch time
  (target < 5% with prefetching);
- throughput: training clips per second per worker = rows * C / epoch seconds / workers;
- 2 workers vs 1: ratio of whole-epoch throughput. On 2 cores, 1 worker gets 1 CPU (and one torch
  thread) and leaves the other to Ray Data; 2 workers get 0.5 CPU each (one thread each) and share
  both cores with the data tasks and gradient all-reduce. Expect little or no gain here: the
  figure shows the overhead of DDP on one small machine, not what a GPU cluster gives.

Epoch 0 includes warm-up (first read of the dataset, thread pools); the figures use the later
epochs. The machine is shared: the load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

_util.ensure_repo_on_path()

from datasets import shards  # noqa: E402
from datasets.manifest import read_manifest  # noqa: E402
from distributed.core.runtime import print_table  # noqa: E402


@dataclass(frozen=True)
class TrainBench:
    """Sizes of one run (videos = subjects * per_class * 4 classes)."""

    subjects: int = 6
    per_class: int = 1
    n_frames: int = 16
    size: int = 112
    clips: int = 5
    frames: int = 2
    lstm1: int = 32
    lstm2: int = 16
    batch_size: int = 4
    epochs: int = 3
    workers: tuple[int, ...] = (1, 2)


FULL = TrainBench()
QUICK = TrainBench(subjects=4, size=64, epochs=2)
# Smoke: the whole path (preprocessing, both worker counts, the tables) at toy sizes.
SMOKE = TrainBench(subjects=4, n_frames=4, size=32, clips=2, lstm1=8, lstm2=4, epochs=1)


def make_shards(scratch: Path, cfg: TrainBench) -> str:
    """Synthetic videos -> shards through the real preprocessing job (Ray already started)."""
    from datasets.synthetic import write_facial_set
    from distributed import preprocess

    src, out = scratch / "videos", scratch / "shards"
    write_facial_set(src, cfg.subjects, cfg.per_class, seed=0, n_frames=cfg.n_frames)
    argv = ["facial", "--source", str(src), "--out", str(out), "--size", str(cfg.size)]
    code = preprocess.main(argv + ["--folds", "2", "--inner-folds", "2"])
    if code != 0:
        raise RuntimeError(f"preprocessing failed with exit code {code}")
    return str(out)


def every_row(root: str):
    """The datasets of one fold of every row, no validation split (read once, shared by fits)."""
    from distributed.training.launch import FoldSpec, prepare_datasets

    ids = tuple(shards.read_table(root, columns=["id"])["id"].to_pylist())
    return prepare_datasets(root, [FoldSpec(ids, None)])


def run_fit(data, cfg: TrainBench, workers: int, scratch: Path) -> dict:
    """One ``fit_folds`` over every row (no validation split); per-epoch figures."""
    from distributed.core.config import default_config
    from distributed.training.launch import Resources, fit_folds

    tcfg = default_config(
        "facial",
        clips=cfg.clips,
        frames=cfg.frames,
        lstm1=cfg.lstm1,
        lstm2=cfg.lstm2,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
    )
    t0 = time.perf_counter()
    fit = fit_folds(
        tcfg,
        data,
        storage_path=str(scratch / "runs"),
        name=f"bench-{workers}w",
        resources=Resources(workers),
        write_model=False,
    )
    wall = time.perf_counter() - t0
    h = fit.history
    epochs = [
        {
            "epoch": int(r["epoch"]),
            "seconds": float(r["epoch_seconds"]),
            "wait": float(r["data_wait_fraction"]),
            "rows": int(r["train_n"]),
            "clips_per_s_per_worker": r["train_n"] * cfg.clips / r["epoch_seconds"] / workers,
        }
        for _, r in h.iterrows()
    ]
    return {"workers": workers, "fit_wall_s": wall, "epochs": epochs}


def steady(run: dict, key: str) -> float:
    """Mean of ``key`` over the epochs after the first (the first when there is only one)."""
    eps = run["epochs"][1:] or run["epochs"]
    return sum(e[key] for e in eps) / len(eps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer, smaller videos; 2 epochs")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, 1 epoch (a test runs it)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else QUICK if args.quick else FULL
    mode = "(smoke)" if args.smoke else "(quick)" if args.quick else ""
    print(f"training benchmark {mode}: {cfg}")
    print(f"start: {_util.machine_load()}")
    runs, loads = [], []
    with _util.scratch_dir(args.keep) as scratch:
        _util.use_private_ray_tmp(scratch)
        ray = _util.start_ray(2)
        try:
            t0 = time.perf_counter()
            root = make_shards(scratch, cfg)
            n = read_manifest(root).counts.written
            print(f"{n} videos preprocessed at S={cfg.size} in {time.perf_counter() - t0:.1f} s")
            data = every_row(root)
            for w in cfg.workers:
                runs.append(run_fit(data, cfg, w, scratch))
                loads.append(_util.machine_load())
        finally:
            ray.shutdown()

    print(
        f"\nSISTCM+TLSTM, C={cfg.clips} K={cfg.frames} S={cfg.size}, global batch {cfg.batch_size},"
        f" {n} training videos, Ray with 2 CPUs"
    )
    rows = []
    for run, load in zip(runs, loads):
        for e in run["epochs"]:
            rows.append(
                (
                    run["workers"],
                    e["epoch"],
                    e["rows"],
                    f"{e['seconds']:.2f}",
                    f"{100 * e['wait']:.1f}%",
                    f"{e['clips_per_s_per_worker']:.2f}",
                    f"{run['fit_wall_s']:.0f}" if e["epoch"] == 0 else "",
                    load if e["epoch"] == 0 else "",
                )
            )
    print_table(
        rows,
        ("workers", "epoch", "rows", "epoch s", "data wait", "clips/s/worker", "fit s", "load"),
    )
    by_w = {r["workers"]: r for r in runs}
    print(f"\nsummary (epochs after the first; {_util.machine_load()})")
    summary = []
    for w, r in by_w.items():
        wait = steady(r, "wait")
        summary.append(
            (
                f"{w} worker(s): data-wait fraction",
                f"{100 * wait:.1f}%",
                "< 5%",
                wait < 0.05,
            )
        )
        cps = steady(r, "clips_per_s_per_worker")
        summary.append((f"{w} worker(s): clips/s per worker", f"{cps:.2f}", "-", "-"))
    if 1 in by_w and 2 in by_w:
        total1 = steady(by_w[1], "clips_per_s_per_worker")
        total2 = 2 * steady(by_w[2], "clips_per_s_per_worker")
        summary.append(("2 workers vs 1: total clips/s", f"{total2 / total1:.2f}x", "-", "-"))
    print_table(summary, ("figure", "measured", "target", "met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
