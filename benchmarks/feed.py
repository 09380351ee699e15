"""Training feed benchmark (issue 15): a streamed fold vs a plain pyarrow read, measured in one run.

    .venv/bin/python benchmarks/feed.py          # 3,000 generated clips (16 frames, 32 px), 4x set
    .venv/bin/python benchmarks/feed.py --quick  # 1,000 clips, fewer passes, no 4x memory run
    .venv/bin/python benchmarks/feed.py --size 112 --clips 1000 --scale 1 --no-step
                                                 # (a) only, on realistic frames
    .venv/bin/python benchmarks/feed.py --smoke  # (a), (b) and (c) at toy sizes, one pass

(a) One epoch of the training feed, forced to stream (materialisation budget 0): the fold
    (``distributed.training.launch.prepare_datasets``, a
    ``distributed.training.stream.StreamedFold``) read as a
    single Train worker reads it (``iter_torch_batches`` with the branch's training collate,
    prefetch 2, the bounded shuffle buffer; read and collate on the shard's two threads),
    against a plain pyarrow read of the same shard files feeding the same collate in one
    thread. Both decode the same rows and sample the same clips; throughput = stored frame bytes
    of the rows delivered / pass time (median of interleaved passes; each streamed pass includes
    the per-epoch cost of starting the reader's threads). Also printed: the
    bytes a fold of 1/5 of the rows plans to read against the whole set (row groups skipped from
    their ``id`` statistics).
(b) Peak memory of a streamed training epoch at 1x and 4x the set: a fresh process (its own Ray)
    runs one pass of the feed with the training collate and a small per-batch computation, while
    a thread samples /proc for the whole process tree (driver, raylet, Ray workers). The model's
    memory does not grow with the data, so the feed is what this measures.
(c) The data a SISTCM worker consumes: frames/s of one training step (C=5, K=2, B=2) of
    ``benchmarks/facial_models.py`` at S=112 and 224 on this CPU, as frames/s and MB/s of uint8
    frames.

The machine is shared: the load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

_util.ensure_repo_on_path()

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from branches.facial.data import FacialRow, facial_table  # noqa: E402
from datasets import shards  # noqa: E402
from datasets.manifest import Counts, Manifest, write_manifest  # noqa: E402
from distributed.core.runtime import print_table  # noqa: E402

MARKER = "BENCH_RESULT "
MB = 1e6
CLASSES = ("a", "b", "c", "d")


@dataclass(frozen=True)
class FeedBench:
    clips: int = 3000
    n_frames: int = 16
    size: int = 32
    per_shard: int = 25
    batch: int = 16
    repeats: int = 5  # passes of ~0.5 s: the median of 5 steadies the ratio
    scale: int = 4  # (b): the larger set holds scale x clips
    step: bool = True  # (c)
    step_sizes: tuple[int, ...] = (112, 224)  # (c): frame sides of the SISTCM step
    step_repeats: int = 3  # (c): timed steps (median), after one warm-up step


FULL = FeedBench()
QUICK = FeedBench(clips=1000, repeats=2, scale=1, step=False)
# Smoke: every part, (b) with its two child processes included, at toy sizes.
SMOKE = FeedBench(
    clips=40, n_frames=4, size=16, per_shard=10, batch=4, repeats=1, scale=2, step_sizes=(32,),
    step_repeats=1,
)  # fmt: skip


def write_set(root: Path, cfg: FeedBench, copies: int = 1) -> list[str]:
    """``copies * clips`` facial rows of smooth random frames, id-sorted, ``per_shard`` a file."""
    rng = np.random.default_rng(0)
    n = cfg.clips * copies
    base = rng.integers(0, 256, (64, cfg.n_frames, cfg.size, cfg.size, 3), dtype=np.uint8)
    ids = [f"s{i % 20:02d}/clip{i:06d}" for i in range(n)]
    order = sorted(range(n), key=lambda i: ids[i])
    for k, start in enumerate(range(0, n, cfg.per_shard)):
        rows = [
            FacialRow(
                id=ids[i],
                subject=ids[i].split("/")[0],
                label=i % len(CLASSES),
                label_name=CLASSES[i % len(CLASSES)],
                frames=np.roll(base[i % 64], i % 7, axis=1),
                face_fraction=1.0,
                centre_cropped=False,
                source="",
            )
            for i in order[start : start + cfg.per_shard]
        ]
        shards.write_shard(facial_table(rows), shards.shard_path(str(root), k))
    counts = Counts(n, n, 0, 0, {c: n // len(CLASSES) for c in CLASSES}, 20)
    write_manifest(str(root), Manifest("facial", CLASSES, {"size": cfg.size}, counts, None))
    return ids


def _train_cfg(cfg: FeedBench):
    from distributed.core.config import default_config

    return default_config("facial", clips=2, frames=2, batch_size=cfg.batch, seed=0)


def plain_pass(files: list[str], cfg: FeedBench, epoch: int):
    """The branch's training collate fed by plain pyarrow ``iter_batches`` over every file."""
    from branches import get_branch
    from distributed.training.ray_data import arrow_columns

    tcfg = _train_cfg(cfg)
    fn = get_branch("facial").collate(tcfg.model, train=True, seed=tcfg.seed, epoch=epoch)
    columns = list(get_branch("facial").columns)
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=cfg.batch, columns=columns):
            yield fn(arrow_columns(pa.Table.from_batches([rb])))


def streamed_pass(ds, cfg: FeedBench, epoch: int, shuffle: bool = True):
    """The streamed fold's shard read as ``distributed.training.ray_host.run_epoch`` reads it."""
    from distributed.training.ray_data import make_collate

    tcfg = _train_cfg(cfg)
    return ds.iter_torch_batches(
        batch_size=cfg.batch,
        collate_fn=make_collate(tcfg, True, epoch),
        prefetch_batches=2,
        local_shuffle_buffer_size=4 * cfg.batch if shuffle else None,
        local_shuffle_seed=tcfg.seed * 100003 + epoch if shuffle else None,
    )


def consume(batches, row_bytes: int) -> tuple[float, int, int, float]:
    """(seconds, rows, checksum of the sampled clips' labels and pixels, seconds to the first
    batch) of one pass."""
    t0 = time.perf_counter()
    rows = check = 0
    first = None
    for b in batches:
        first = time.perf_counter() - t0 if first is None else first
        x = b["x"]
        rows += x.shape[0]
        check += int(b["y"].sum()) + int(x.reshape(-1)[::997].sum())
    return time.perf_counter() - t0, rows, check, first or 0.0


def streamed_dataset(root: str, ids: list[str]):
    from distributed.training.launch import FoldSpec, prepare_datasets

    data = prepare_datasets(root, [FoldSpec(tuple(ids), None)], materialize_bytes=0)
    return data.datasets["train0"].shard(0, 1)  # what a single training worker reads


def feed_benchmark(root: Path, ids: list[str], cfg: FeedBench) -> tuple[list[tuple], dict]:
    files = shards.shard_files(str(root))
    row_bytes = cfg.n_frames * cfg.size * cfg.size * 3
    t0 = time.perf_counter()
    ds = streamed_dataset(str(root), ids)
    plan_s = time.perf_counter() - t0
    readers = {
        "plain pyarrow -> training collate (baseline)": lambda e: plain_pass(files, cfg, e),
        "streamed fold -> iter_torch_batches, shuffle buffer (training path)": lambda e: (
            streamed_pass(ds, cfg, e)
        ),
        "streamed fold -> iter_torch_batches, no shuffle buffer": lambda e: streamed_pass(
            ds, cfg, e, shuffle=False
        ),
    }
    for make in readers.values():  # warm the page cache
        consume(make(0), row_bytes)
    passes: dict[str, list[tuple]] = {k: [] for k in readers}
    for r in range(cfg.repeats):
        for name, make in readers.items():
            passes[name].append(consume(make(r), row_bytes))
    for name, ps in passes.items():
        if any(p[1] != len(ids) for p in ps):
            raise RuntimeError(f"{name} delivered {[p[1] for p in ps]} rows, not {len(ids)}")
    speeds = {
        k: _util.median([p[1] * row_bytes / p[0] / MB for p in ps]) for k, ps in passes.items()
    }
    base = next(iter(speeds.values()))
    rows = [
        (
            k,
            f"{v:.0f}",
            f"{100 * v / base:.0f}%",
            " ".join(f"{p[0]:.2f}s" for p in passes[k]),
            f"{_util.median([p[3] for p in passes[k]]):.2f}",
        )
        for k, v in speeds.items()
    ]
    return rows, {"speeds": speeds, "plan_s": plan_s, "mb": len(ids) * row_bytes / MB}


def fifth_plan(root: Path, ids: list[str]) -> tuple[int, int, int]:
    """(planned bytes of a fold of every 5th subject, total bytes, rows of that fold)."""
    from branches import get_branch

    columns = list(get_branch("facial").columns)
    fold = [i for i in ids if int(i[1:3]) % 5 == 0]
    groups = [g for f in shards.shard_files(str(root)) for g in shards.row_groups(f, columns)]
    plan = shards.fold_plan(groups, fold)
    return sum(p.nbytes for p in plan), sum(g.nbytes for g in groups), len(fold)


# ---------------------------------------------------------------------------------------------
# (b) memory of one streamed epoch, in a child process with its own Ray


def child_main(root: str, cfg_json: str) -> int:
    import torch

    cfg = FeedBench(**json.loads(cfg_json))
    ray = _util.start_ray(2)
    ids = shards.read_table(root, ["id"])["id"].to_pylist()
    ds = streamed_dataset(root, ids)
    w = torch.randn(3, 8)
    t0 = time.perf_counter()
    rows = 0
    for b in streamed_pass(ds, cfg, 0):
        x = b["x"].float().mean(dim=(1, 2, 4, 5))  # (B, 3): a stand-in for the model's step
        _ = (x @ w).sum()
        rows += x.shape[0]
    seconds = time.perf_counter() - t0
    ray.shutdown()
    print(MARKER + json.dumps({"rows": rows, "epoch_s": seconds}), flush=True)
    return 0


def epoch_memory(root: Path, cfg: FeedBench, scratch: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "_child", str(root)]
    cmd.append(json.dumps(cfg.__dict__))
    log_path = root.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=_util.ray_env(scratch), cwd=scratch
        )
        with _util.TreeSampler(proc.pid) as sampler:
            proc.wait()
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"epoch run failed (exit {proc.returncode}); see {log_path}")
    out = json.loads(lines[-1][len(MARKER) :])
    out["memory"] = sampler.result
    return out


def step_need(cfg: FeedBench) -> list[tuple]:
    """Frames/s one SISTCM training step consumes on this CPU (facial_models.py's step)."""
    import importlib.util

    # by path: this script may be run from anywhere, with or without benchmarks/ on sys.path
    spec = importlib.util.spec_from_file_location(
        "bench_models", Path(__file__).with_name("facial_models.py")
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_models"] = bench  # dataclasses look their module up while it loads
    spec.loader.exec_module(bench)
    Case, measure = bench.Case, bench.measure

    rows = []
    for size in cfg.step_sizes:
        case = Case(batch=2, clips=5, frames=2, size=size)
        t = measure(case, repeats=cfg.step_repeats, warmup=1, channels_last=True)["sistcm_train"]
        frames = case.batch * case.clips * case.frames
        rows.append(
            (size, f"{t:.2f}", f"{frames / t:.1f}", f"{frames / t * size * size * 3 / MB:.2f}")
        )
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        return child_main(argv[1], argv[2])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller set, fewer passes")
    parser.add_argument("--smoke", action="store_true", help="toy sizes (a test runs it)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--size", type=int, help="frame side in px (default 32)")
    parser.add_argument("--clips", type=int, help="clips in the 1x set (default 3000)")
    parser.add_argument("--scale", type=int, help="(b): the larger set's multiple; 1 skips (b)")
    parser.add_argument("--no-step", action="store_true", help="skip (c)")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else QUICK if args.quick else FULL
    given = {"size": args.size, "clips": args.clips, "scale": args.scale}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    if args.no_step:
        cfg = replace(cfg, step=False)
    mode = "(smoke)" if args.smoke else "(quick)" if args.quick else ""
    print(f"feed benchmark {mode}: {cfg}")
    print(f"start: {_util.machine_load()}")
    summary = []
    with _util.scratch_dir(args.keep) as scratch:
        root = scratch / "set-1x"
        ids = write_set(root, cfg)
        planned, total, fold_rows = fifth_plan(root, ids)
        print(
            f"\nfold of 1/5 of the subjects ({fold_rows} of {len(ids)} rows): plans "
            f"{planned / MB:.1f} MB of {total / MB:.1f} MB ({planned / total:.0%})"
        )
        summary.append(("fold of 1/5: bytes planned / all", f"{planned / total:.0%}", "~20%", "-"))

        _util.use_private_ray_tmp(scratch)
        ray = _util.start_ray(2)
        try:
            rows, info = feed_benchmark(root, ids, cfg)
        finally:
            ray.shutdown()
        print(
            f"\n(a) one epoch over {len(ids)} clips, {info['mb']:.0f} MB of frames, batch "
            f"{cfg.batch}, 2 Ray CPUs, budget 0 (streamed) ({_util.machine_load()})"
        )
        print_table(rows, ("reader", "MB/s (median)", "of plain", "passes", "s to 1st batch"))
        s = list(info["speeds"].values())
        summary.append(("(a) streamed training feed / plain pyarrow", f"{s[1] / s[0]:.0%}",
                        ">= 80%", s[1] / s[0] >= 0.8))  # fmt: skip

        if cfg.scale > 1:
            big = scratch / "set-4x"
            write_set(big, cfg, copies=cfg.scale)
            one = epoch_memory(root, cfg, scratch)
            four = epoch_memory(big, cfg, scratch)
            print(f"\n(b) peak memory of one streamed epoch, process tree ({_util.machine_load()})")
            table = []
            for label, r in (
                (f"1x = {cfg.clips}", one),
                (f"{cfg.scale}x = {cfg.clips * cfg.scale}", four),
            ):
                m = r["memory"]
                table.append(
                    (label, r["rows"], f"{r['epoch_s']:.1f}", _gib(m.peak_rss), _gib(m.peak_pss))
                )
            print_table(table, ("clips", "rows", "epoch s", "peak sum RSS", "peak sum PSS"))
            ratio = four["memory"].peak_rss / one["memory"].peak_rss
            pss = four["memory"].peak_pss / one["memory"].peak_pss
            summary.append(
                (f"(b) peak RSS {cfg.scale}x / 1x", f"{ratio:.2f}x", "<= 1.2x", ratio <= 1.2)
            )
            summary.append(
                (f"(b) peak PSS {cfg.scale}x / 1x", f"{pss:.2f}x", "<= 1.2x", pss <= 1.2)
            )

    if cfg.step:
        print(f"\n(c) what one SISTCM worker consumes on this CPU ({_util.machine_load()})")
        print_table(step_need(cfg), ("S", "train step s", "frames/s", "MB/s uint8"))
    print(f"\nsummary ({_util.machine_load()})")
    print_table(summary, ("ratio", "measured", "target", "met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
