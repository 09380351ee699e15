"""Object storage benchmark (issue 15, benchmark d): one streaming read of a fold from a local
S3-compatible server vs the same files on local disk, measured side by side in one run.

    .venv/bin/python benchmarks/storage.py          # 320 rows of 16 frames at S = 112
    .venv/bin/python benchmarks/storage.py --quick  # 96 rows, 2 passes each
    .venv/bin/python benchmarks/storage.py --smoke  # 16 rows of 4 frames at 48 px, 1 pass each

The same facial shard files (synthetic smooth uint8 frames, zstd Parquet, 16 rows per file) are
written to a local folder and to a bucket of moto's S3 server, which runs in its own process on
127.0.0.1 (``AWS_ENDPOINT_URL`` and dummy credentials in the environment, set before Ray starts
so its workers see them). Three readers, each on both stores, passes interleaved:

- the streamed training path (a fold over the materialisation budget): the fold's plan from the
  files' footers, then one worker's ``distributed.training.stream`` reader (planned row groups,
  shuffle
  buffer, the facial branch's training collate: clip sampling on uint8 frames), every row of
  the set in the fold;
- the read of a fold under the budget: ``distributed.training.ray_data.fold_dataset`` (Ray Data
read tasks
  over the planned row groups) -> ``iter_torch_batches`` with the same collate (training reads
  such a fold once, then from the object store);
- the transport alone: each shard file's bytes fetched with ``datasets.storage.read_bytes`` and
  decoded with plain pyarrow, in this process.

Throughput = stored Parquet bytes / pass time (median of the passes); the ratio is S3 / local.
moto is a Python HTTP server holding the objects in memory: the figure says what the S3 code path
costs against a local server, not what a real bucket over a network delivers. The machine is
shared: the load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from branches.facial.data import facial_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

_util.ensure_repo_on_path()

import numpy as np  # noqa: E402

MB = 1e6


@dataclass(frozen=True)
class StorageBench:
    rows: int = 320
    frames: int = 16
    size: int = 112
    per_file: int = 16
    batch: int = 8
    passes: int = 3


FULL = StorageBench()
QUICK = StorageBench(rows=96, passes=2)
SMOKE = StorageBench(rows=16, frames=4, size=48, per_file=8, batch=4, passes=1)


def start_moto(scratch: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process on a free 127.0.0.1 port; (process, endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(scratch / "moto.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"moto server ended: {(scratch / 'moto.log').read_text()}"
                ) from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start within 60 s")


def synthetic_rows(cfg: StorageBench, seed: int = 0):
    """Facial rows of smooth moving blobs with sensor noise (compress about like real frames)."""
    from branches.facial.data import FacialRow

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : cfg.size, 0 : cfg.size].astype(np.float32)
    for i in range(cfg.rows):
        cx, cy = rng.uniform(20, cfg.size - 20, 2)
        t = np.arange(cfg.frames, dtype=np.float32)[:, None, None]
        blob = np.exp(-((xx - cx - t) ** 2 + (yy - cy) ** 2) / 300.0)  # (T, S, S)
        rgb = np.stack([blob * 200 + 30, blob * 120 + 60, 90 - blob * 60], axis=-1)
        rgb += rng.normal(0, 6, rgb.shape).astype(np.float32)  # sensor noise: zstd ~2-3x, not 70x
        yield FacialRow(
            id=f"c{i % 4}/s{i % 8:02d}_{i:05d}",
            subject=f"s{i % 8:02d}",
            label=i % 4,
            label_name=f"c{i % 4}",
            frames=rgb.clip(0, 255).astype(np.uint8),
            face_fraction=1.0,
            centre_cropped=False,
            source="synthetic",
        )


def write_set(roots: list[str], cfg: StorageBench) -> tuple[list[str], int]:
    """The same shard files under every root; (row ids, stored bytes of one copy).

    Rows are written in id order, as preprocessing writes them: a row group's ``id`` range then
    holds only its own rows, which a streamed fold's plan relies on (row groups of several rows,
    as small frames give, would otherwise overlap)."""
    from datasets import shards, storage

    rows = sorted(synthetic_rows(cfg), key=lambda r: r.id)
    total = 0
    for j, start in enumerate(range(0, len(rows), cfg.per_file)):
        sink_table = facial_table(rows[start : start + cfg.per_file])
        for root in roots:
            shards.write_shard(sink_table, shards.shard_path(root, j))
        total += len(storage.read_bytes(shards.shard_path(roots[0], j)))
    return [r.id for r in rows], total


def fold_pass(root: str, ids: list[str], cfg: StorageBench) -> tuple[float, int, int]:
    """(seconds, rows, checksum) of one training-path pass over the fold."""
    from distributed.core.config import default_config
    from distributed.training.ray_data import fold_dataset, make_collate

    model_cfg = default_config("facial", clips=2, frames=2)
    t0 = time.perf_counter()
    ds = fold_dataset(root, "facial", ids)
    n = check = 0
    for b in ds.iter_torch_batches(
        batch_size=cfg.batch, collate_fn=make_collate(model_cfg, True, 0), prefetch_batches=2
    ):
        n += b["y"].shape[0]
        check += int(b["y"].sum())
    return time.perf_counter() - t0, n, check


def streamed_pass(root: str, ids: list[str], cfg: StorageBench) -> tuple[float, int, int]:
    """(seconds, rows, checksum) of one pass of a streamed fold as one training worker reads it
    (``distributed.training.stream``: the footers, then the planned row groups, read by the
    worker)."""
    from branches import get_branch
    from distributed.core.config import default_config
    from distributed.training.ray_data import make_collate, shard_row_groups
    from distributed.training.stream import StreamedFold

    model_cfg = default_config("facial", clips=2, frames=2)
    columns = list(get_branch("facial").columns)
    t0 = time.perf_counter()
    fold = StreamedFold.plan(shard_row_groups(root, columns), columns, ids, split=True)
    n = check = 0
    for b in fold.shard(0, 1).iter_torch_batches(
        batch_size=cfg.batch,
        collate_fn=make_collate(model_cfg, True, 0),
        prefetch_batches=2,
        local_shuffle_buffer_size=4 * cfg.batch,
        local_shuffle_seed=0,
    ):
        n += b["y"].shape[0]
        check += int(b["y"].sum())
    return time.perf_counter() - t0, n, check


def plain_pass(root: str) -> tuple[float, int, int]:
    """(seconds, rows, checksum) of fetching and decoding every shard file in this process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datasets import shards, storage

    t0 = time.perf_counter()
    n = check = 0
    for f in shards.shard_files(root):
        t = pq.read_table(pa.BufferReader(storage.read_bytes(f)), columns=["label", "frames"])
        n += t.num_rows
        check += int(np.sum(t["label"].to_numpy()))
    return time.perf_counter() - t0, n, check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="96 rows, 2 passes per reader and store")
    p.add_argument("--smoke", action="store_true", help="toy sizes, 1 pass (a test runs it)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args(argv)
    cfg = SMOKE if args.smoke else QUICK if args.quick else FULL
    print(f"storage benchmark ({_util.machine_load()})", flush=True)
    with _util.scratch_dir(args.keep) as scratch:
        moto, endpoint = start_moto(scratch)
        try:
            os.environ.update(
                AWS_ENDPOINT_URL=endpoint,
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_REGION="us-east-1",
                AWS_EC2_METADATA_DISABLED="true",
            )
            import pyarrow.fs as pafs

            pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(
                "bench"
            )
            local, remote = str(scratch / "shards"), "s3://bench/shards"
            ids, stored = write_set([local, remote], cfg)
            print(
                f"{cfg.rows} rows of {cfg.frames} frames at {cfg.size} px in "
                f"{-(-cfg.rows // cfg.per_file)} files: {stored / MB:.1f} MB stored",
                flush=True,
            )
            _util.use_private_ray_tmp(scratch)
            _util.start_ray(num_cpus=2)
            rows = run(cfg, ids, stored, local, remote)
        finally:
            import ray

            ray.shutdown()
            moto.kill()
            moto.wait(timeout=30)
    from distributed.core.runtime import print_table

    print_table(rows, ("reader", "local MB/s", "S3 MB/s", "S3 / local", "passes (local | S3)"))
    print(f"({_util.machine_load()})")
    return 0


def run(cfg: StorageBench, ids: list[str], stored: int, local: str, remote: str) -> list[tuple]:
    readers = {
        "streamed fold, one worker's reader (folds over the budget)": (
            lambda root: streamed_pass(root, ids, cfg)
        ),
        "Ray Data read: fold_dataset -> iter_torch_batches (folds under the budget)": (
            lambda root: fold_pass(root, ids, cfg)
        ),
        "transport: storage.read_bytes + pyarrow decode": plain_pass,
    }
    for read in readers.values():  # warm up: Ray workers, page cache, connections
        read(local), read(remote)
    rows = []
    for name, read in readers.items():
        times: dict[str, list[float]] = {"local": [], "s3": []}
        seen = set()
        for _ in range(cfg.passes):
            for where, root in (("local", local), ("s3", remote)):
                seconds, n, check = read(root)
                seen.add((n, check))
                times[where].append(seconds)
        if len(seen) != 1 or next(iter(seen))[0] != cfg.rows:
            raise RuntimeError(f"{name}: the stores delivered different rows: {seen}")
        mbs = {k: stored / MB / _util.median(v) for k, v in times.items()}
        passes = " ".join(f"{t:.2f}" for t in times["local"]) + " | "
        passes += " ".join(f"{t:.2f}" for t in times["s3"])
        rows.append(
            (
                name,
                f"{mbs['local']:.0f}",
                f"{mbs['s3']:.0f}",
                f"{mbs['s3'] / mbs['local']:.2f}",
                passes,
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
