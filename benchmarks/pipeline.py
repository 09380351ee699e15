"""Data-pipeline benchmark (issue 4): four ratios, each measured side by side in one run.

    .venv/bin/python benchmarks/pipeline.py          # N = 8 videos, 10N = 80, 16 frames, S = 224
    .venv/bin/python benchmarks/pipeline.py --quick  # 8-frame videos, 3 Ray jobs instead of 4

(a) Preprocessing speed-up, 2 Ray CPUs vs 1 (target >= 1.7x): ``python -m distributed.preprocess
    facial`` run twice on the same synthetic source (10N MJPEG videos: decode, Haar detection,
    crop, resize, Parquet), each in its own subprocess with its own local Ray instance
    (``num_cpus`` 1, then 2) and fresh output folders. The ratio uses the job time (from
    ``preprocess.main`` entry to exit, Ray already started), the fastest of 2 jobs per instance
    (other users' load only ever slows a run down); the whole process wall time, including Ray
    start and shutdown, is shown next to it.
(b) Peak memory for N vs 10N videos (target <= 1.2x): the job with 2 Ray CPUs (with --quick, the
    10N figure comes from the 2-CPU run of (a)), while a thread samples /proc every 0.1 s for
    the job's whole process tree (the driver and every process it started: GCS, raylet, Ray
    workers, dashboard and agents). Reported: the peak of the sum of the processes' RSS (shared
    pages counted once per process, so it overstates) and the peak of the sum of their PSS
    (shared pages divided among their users).
(c) One pass of Ray Data ``iter_torch_batches`` over the shards vs a plain pyarrow read of the same
    files (target >= 80%): the 10N shards rewritten into files of 16 rows; every reader yields
    the same (B, T, S, S, 3) uint8 torch batches (the checksum proves it). Ray rows: streaming
    ``read_parquet`` with an Arrow collate (the same decode as the pyarrow reader), streaming with
    a numpy collate (the path ``FacialCollate`` takes), and the dataset ``materialize()``d first
    (what training does with folds under 2 GiB). Throughput = frame bytes delivered / pass time.
(d) Stored bytes per frame vs the reference's float32 frames (S*S*3*4 bytes): the Parquet files'
    total size (zstd) / the frames they hold, at the same S.

The machine is shared: the load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

_util.ensure_repo_on_path()

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from ray.data.collate_fn import ArrowBatchCollateFn, NumpyBatchCollateFn  # noqa: E402

from datasets import shards  # noqa: E402
from distributed.common import print_table  # noqa: E402

MARKER = "BENCH_RESULT "
READ_COLUMNS = ["label", "n_frames", "size", "frames"]
MB = 1e6


@dataclass(frozen=True)
class PipelineBench:
    """Sizes of one run: N = subjects * per_class * 4 classes videos, 10N by copying them."""

    subjects: int = 2
    per_class: int = 1
    scale: int = 10
    n_frames: int = 16
    size: int = 224
    per_shard: int = 4
    read_copies: int = 2  # the read set holds read_copies * 10N rows
    read_rows_per_file: int = 16
    read_batch: int = 8
    read_repeats: int = 3
    job_repeats: int = 2  # (a): jobs per Ray instance, the fastest counts


FULL = PipelineBench()
# Quick: shorter videos, and the 10N memory run is the 2-CPU run of (a) (sampled while it runs;
# the sampler costs a few % of a core, so the full run keeps the two apart).
QUICK = PipelineBench(n_frames=8, read_copies=1, read_repeats=2, job_repeats=1)


# ---------------------------------------------------------------------------------------------
# Sources and preprocessing runs


def make_sources(scratch: Path, cfg: PipelineBench) -> tuple[Path, Path, int, int]:
    """Sources of N and 10N videos: the N generated videos hard-linked once / 10 times.

    Every linked file gets its own subject name, so even N videos fill the 2 x 2 nested folds the
    job writes into its manifest (the folds do not matter here; the job needs them to finish).
    """
    from datasets.synthetic import write_facial_set

    paths = write_facial_set(
        scratch / "generated", cfg.subjects, cfg.per_class, seed=0, n_frames=cfg.n_frames
    )
    dirs = {1: scratch / "src-n", cfg.scale: scratch / "src-10n"}
    for copies, root in dirs.items():
        for copy in range(copies):
            for p in paths:
                subject, rest = p.stem.split("_", 1)
                label = p.parent.name
                dest = root / label / f"{subject}{label[:5]}{copy}_{rest}{p.suffix}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(p, dest)
                except OSError:
                    dest.write_bytes(p.read_bytes())
    return dirs[1], dirs[cfg.scale], len(paths), len(paths) * cfg.scale


def child_main(num_cpus: float, repeats: int, argv: list[str]) -> int:
    """Subprocess body: start a local Ray with ``num_cpus``, run the preprocess job ``repeats``
    times (repeat r > 0 writes to ``<out>-r<r>``, a fresh folder), report each job's time."""
    from distributed import preprocess

    t0 = time.perf_counter()
    ray = _util.start_ray(num_cpus)
    t1 = time.perf_counter()
    jobs, code = [], 0
    out = argv.index("--out") + 1
    for r in range(repeats):
        run_argv = list(argv)
        if r:
            run_argv[out] = f"{argv[out]}-r{r}"
        t = time.perf_counter()
        code = code or preprocess.main(run_argv)
        jobs.append(time.perf_counter() - t)
    ray.shutdown()
    print(MARKER + json.dumps({"ray_start_s": t1 - t0, "jobs_s": jobs, "exit_code": code}))
    return code


def run_preprocess(
    source: Path,
    out: Path,
    num_cpus: float,
    cfg: PipelineBench,
    scratch: Path,
    sample: bool,
    repeats: int = 1,
) -> dict:
    """Preprocessing job(s) in a fresh subprocess (own Ray); its log goes to ``out``.log.

    ``job_s`` is the fastest of ``repeats`` jobs: the least disturbed by other users' load."""
    argv = ["facial", "--source", str(source), "--out", str(out), "--size", str(cfg.size)]
    argv += ["--per-shard", str(cfg.per_shard), "--folds", "2", "--inner-folds", "2"]
    cmd = [sys.executable, os.path.abspath(__file__), "_child", str(num_cpus), str(repeats)]
    cmd.append(json.dumps(argv))
    log_path = out.with_suffix(".log")
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=_util.ray_env(scratch), cwd=scratch
        )
        sampler = _util.TreeSampler(proc.pid) if sample else None
        if sampler:
            with sampler:
                proc.wait()
        else:
            proc.wait()
        wall = time.perf_counter() - t0
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"preprocessing failed (exit {proc.returncode}); see {log_path}")
    result = json.loads(lines[-1][len(MARKER) :])
    result["wall_s"] = wall
    result["job_s"] = min(result["jobs_s"])
    result["memory"] = sampler.result if sampler else None
    return result


# ---------------------------------------------------------------------------------------------
# Readers: every one yields {"x": (B, T, S, S, 3) uint8, "y": (B,) int64}


def _arrow_frames(table) -> list[np.ndarray]:
    """Zero-copy (T, S, S, 3) views of a pyarrow table's/record batch's ``frames`` column."""
    col = table.column("frames")
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    ns, ss = table.column("n_frames").to_numpy(), table.column("size").to_numpy()
    out = []
    for chunk in chunks:
        offsets = np.frombuffer(chunk.buffers()[1], np.int64)[chunk.offset :]  # (len+1,) int64
        data = np.frombuffer(chunk.buffers()[2], np.uint8)
        for i in range(len(chunk)):
            out.append(data[offsets[i] : offsets[i + 1]])
    return [shards.facial_frames(buf, n, s) for buf, n, s in zip(out, ns, ss)]


def decode_arrow(table) -> dict[str, torch.Tensor]:
    x = torch.from_numpy(np.stack(_arrow_frames(table)))  # (B, T, S, S, 3) uint8
    y = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return {"x": x, "y": y}


class ArrowCollate(ArrowBatchCollateFn):
    """Ray batches as pyarrow tables, decoded exactly as the plain pyarrow reader does."""

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return decode_arrow(batch)


class NumpyCollate(NumpyBatchCollateFn):
    """Ray batches as numpy (bytes objects per row), decoded as ``FacialCollate`` does."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        videos = [
            shards.facial_frames(p, n, s)
            for p, n, s in zip(batch["frames"], batch["n_frames"], batch["size"])
        ]
        x = torch.from_numpy(np.stack(videos))  # (B, T, S, S, 3) uint8
        return {"x": x, "y": torch.as_tensor(batch["label"].astype(np.int64))}


def consume(batches) -> tuple[float, int, int, int]:
    """(seconds, rows, frame bytes, checksum) of one pass; the checksum samples the same elements
    of every row, so it depends neither on the row order nor on where batches are cut."""
    t0 = time.perf_counter()
    rows = nbytes = check = 0
    for b in batches:
        x = b["x"]
        rows += x.shape[0]
        nbytes += x.numel()
        check += int(x.reshape(x.shape[0], -1)[:, ::4099].sum()) + int(b["y"].sum())
    return time.perf_counter() - t0, rows, nbytes, check


def plain_batches(files: list[str], batch: int):
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch, columns=READ_COLUMNS):
            yield decode_arrow(rb)


def build_read_set(src: Path, dest: Path, cfg: PipelineBench) -> list[str]:
    """The source shards' rows, ``read_copies`` times, rewritten as files of a fixed row count."""
    table = shards.read_table(str(src))
    table = pa.concat_tables([table] * cfg.read_copies)
    n = cfg.read_rows_per_file
    for i, start in enumerate(range(0, table.num_rows, n)):
        shards.write_shard(table.slice(start, n), shards.shard_path(str(dest), i))
    return shards.shard_files(str(dest))


def read_benchmark(files: list[str], cfg: PipelineBench) -> tuple[list[tuple], dict]:
    """Interleaved passes of each reader; rows of (reader, median MB/s, % of plain, passes)."""
    import ray
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.read_parquet(files).select_columns(READ_COLUMNS)
    B = cfg.read_batch
    readers = {
        "plain pyarrow iter_batches (baseline)": lambda: plain_batches(files, B),
        "Ray read_parquet -> iter_torch_batches, Arrow collate": lambda: ds.iter_torch_batches(
            batch_size=B, collate_fn=ArrowCollate(), prefetch_batches=2
        ),
        "Ray read_parquet -> iter_torch_batches, numpy collate": lambda: ds.iter_torch_batches(
            batch_size=B, collate_fn=NumpyCollate(), prefetch_batches=2
        ),
    }
    consume(readers["plain pyarrow iter_batches (baseline)"]())  # warm the page cache
    consume(readers["Ray read_parquet -> iter_torch_batches, Arrow collate"]())  # start workers
    t0 = time.perf_counter()
    mds = ds.materialize()
    materialize_s = time.perf_counter() - t0
    readers["Ray materialized -> iter_torch_batches, numpy collate (training path)"] = lambda: (
        mds.iter_torch_batches(batch_size=B, collate_fn=NumpyCollate(), prefetch_batches=2)
    )
    passes: dict[str, list[tuple]] = {k: [] for k in readers}
    for _ in range(cfg.read_repeats):
        for name, make in readers.items():
            passes[name].append(consume(make()))
    reference = passes["plain pyarrow iter_batches (baseline)"][0][1:]
    for name, ps in passes.items():
        if any(p[1:] != reference for p in ps):
            raise RuntimeError(f"{name} delivered other data: {ps[0][1:]} vs {reference}")
    speeds = {k: _util.median([p[2] / p[0] / MB for p in ps]) for k, ps in passes.items()}
    base = speeds["plain pyarrow iter_batches (baseline)"]
    rows = [
        (k, f"{v:.0f}", f"{100 * v / base:.0f}%", " ".join(f"{p[0]:.2f}s" for p in passes[k]))
        for k, v in speeds.items()
    ]
    info = {"rows": reference[0], "mb": reference[1] / MB, "materialize_s": materialize_s}
    info["speeds"] = speeds
    return rows, info


# ---------------------------------------------------------------------------------------------


def stored_bytes(root: Path) -> tuple[int, int]:
    """(total size of the shard files, frames they hold)."""
    files = shards.shard_files(str(root))
    frames = int(np.sum(shards.read_table(str(root), columns=["n_frames"])["n_frames"]))
    return sum(os.path.getsize(f) for f in files), frames


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        return child_main(float(argv[1]), int(argv[2]), json.loads(argv[3]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer passes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    print(f"pipeline benchmark {'(quick)' if args.quick else ''}: {cfg}")
    print(f"start: {_util.machine_load()}")
    with _util.scratch_dir(args.keep) as scratch:
        t0 = time.perf_counter()
        small, large, n, n10 = make_sources(scratch, cfg)
        print(
            f"sources: N = {n}, 10N = {n10} videos of {cfg.n_frames} frames "
            f"({time.perf_counter() - t0:.1f} s)"
        )

        # (a) same 10N source, 1 then 2 Ray CPUs, each a fresh Ray instance and output
        reps = cfg.job_repeats
        one = run_preprocess(large, scratch / "out-cpu1", 1, cfg, scratch, False, reps)
        two = run_preprocess(large, scratch / "out-cpu2", 2, cfg, scratch, args.quick, reps)
        load_a = _util.machine_load()
        speedup = one["job_s"] / two["job_s"]
        print(f"\n(a) preprocessing {n10} videos at S={cfg.size} ({load_a})")
        print_table(
            [
                (
                    f"{c} CPU",
                    " ".join(f"{j:.1f}" for j in r["jobs_s"]),
                    f"{n10 / r['job_s']:.2f}",
                    f"{r['ray_start_s']:.1f}",
                    f"{r['wall_s']:.1f}",
                )
                for c, r in ((1, one), (2, two))
            ],
            ("Ray num_cpus", "job s (each)", "videos/s (best)", "Ray start s", "process wall s"),
        )
        wall_ratio = one["wall_s"] / two["wall_s"]
        print(
            f"speed-up 2 vs 1 CPU: {speedup:.2f}x job time (target >= 1.7x), "
            f"{wall_ratio:.2f}x whole-process wall"
        )

        # (b) N vs 10N with 2 CPUs, memory of the whole process tree sampled from /proc
        mem_n = run_preprocess(small, scratch / "mem-n", 2, cfg, scratch, sample=True)
        if args.quick:
            mem_10n = two
        else:
            mem_10n = run_preprocess(large, scratch / "mem-10n", 2, cfg, scratch, sample=True)
        load_b = _util.machine_load()
        print(f"\n(b) peak memory of the job's process tree, 2 Ray CPUs ({load_b})")
        rows = []
        for label, r in ((f"N = {n}", mem_n), (f"10N = {n10}", mem_10n)):
            m = r["memory"]
            rows.append((label, _gib(m.peak_rss), _gib(m.peak_pss), m.max_processes, m.samples))
        print_table(rows, ("videos", "peak sum RSS", "peak sum PSS", "processes", "samples"))
        rss_ratio = mem_10n["memory"].peak_rss / mem_n["memory"].peak_rss
        pss_ratio = mem_10n["memory"].peak_pss / mem_n["memory"].peak_pss
        print(f"peak memory 10N / N: {rss_ratio:.2f}x RSS, {pss_ratio:.2f}x PSS (target <= 1.2x)")

        # (d) bytes per stored frame, from the 10N output
        size, frames = stored_bytes(scratch / "out-cpu2")
        ours = size / frames
        ref = cfg.size * cfg.size * 3 * 4
        print(f"\n(d) bytes per stored frame at S={cfg.size}")
        print_table(
            [
                ("reference: float32 frames", f"{ref:,}", "1.00"),
                ("uint8 frames, uncompressed", f"{ref // 4:,}", f"{ref / (ref // 4):.2f}"),
                (
                    f"our shards (zstd Parquet, {frames} frames)",
                    f"{ours:,.0f}",
                    f"{ref / ours:.2f}",
                ),
            ],
            ("layout", "bytes/frame", "x smaller than reference"),
        )

        # (c) Ray Data vs plain pyarrow over the same files, in this process
        _util.use_private_ray_tmp(scratch)
        files = build_read_set(scratch / "out-cpu2", scratch / "read-set", cfg)
        ray = _util.start_ray(2)
        try:
            read_rows, info = read_benchmark(files, cfg)
        finally:
            ray.shutdown()
        load_c = _util.machine_load()
        print(
            f"\n(c) one pass over {len(files)} files, {info['rows']} rows, "
            f"{info['mb']:.0f} MB of frames, batch {cfg.read_batch}, 2 Ray CPUs ({load_c})"
        )
        print_table(read_rows, ("reader", "MB/s (median)", "of plain", "passes"))
        print(f"(materialize() took {info['materialize_s']:.2f} s, once per fit)")

    s = info["speeds"]
    names = list(s)
    print(f"\nsummary ({_util.machine_load()})")
    print_table(
        [
            ("(a) preprocess 2 vs 1 Ray CPU", f"{speedup:.2f}x", ">= 1.7x", speedup >= 1.7),
            ("(b) peak RSS 10N / N", f"{rss_ratio:.2f}x", "<= 1.2x", rss_ratio <= 1.2),
            ("(b) peak PSS 10N / N", f"{pss_ratio:.2f}x", "<= 1.2x", pss_ratio <= 1.2),
            (
                "(c) Ray streaming, Arrow collate / plain",
                f"{s[names[1]] / s[names[0]]:.0%}",
                ">= 80%",
                s[names[1]] / s[names[0]] >= 0.8,
            ),
            (
                "(c) Ray streaming, numpy collate / plain",
                f"{s[names[2]] / s[names[0]]:.0%}",
                ">= 80%",
                s[names[2]] / s[names[0]] >= 0.8,
            ),
            (
                "(c) Ray materialized / plain",
                f"{s[names[3]] / s[names[0]]:.0%}",
                ">= 80%",
                s[names[3]] / s[names[0]] >= 0.8,
            ),
            ("(d) reference float32 / our bytes per frame", f"{ref / ours:.1f}x", "-", "-"),
        ],
        ("ratio", "measured", "target", "met"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
