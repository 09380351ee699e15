"""Pose extraction throughput: a plain loop vs Ray tasks on 1 and 2 CPUs.

    .venv/bin/python benchmarks/pose.py            # 12 videos x 24 frames, 2 runs per setting
    .venv/bin/python benchmarks/pose.py --quick    # 6 videos, 1 run per setting
    .venv/bin/python benchmarks/pose.py --smoke    # 2 videos x 4 frames, 1 run per setting

The videos: the astronaut, Grace Hopper and the cameraman pasted onto a 512x400 grey canvas
that moves and grows over the clip (as in tests/test_pose.py), written once as MJPG AVI files.
Every setting runs ``datasets.pose.pose_from_path`` on the same files (decode + MediaPipe Pose):

- loop: one process, the videos one after another (the baseline);
- Ray, 1 and 2 CPUs: one 1-CPU Ray task per video (as ``distributed.preprocess`` runs its
  shard tasks) in a subprocess with its own local Ray instance
  (``distributed.core.runtime.init_ray(num_cpus=N)``); the job time runs from the first submission
  to
  the last result back at the driver, Ray already started. Each task runs one video on one
  CPU: OpenCV is set to one thread and OMP_NUM_THREADS=1 (MediaPipe's CPU graph itself keeps
  to about one core, see the CPU/wall column of the loop).

Frames/s = frames / time; the fastest run per setting counts (other users' load only ever slows
a run down). Ratios are against the loop measured in the same run. The first Ray run of each
instance also pays for importing MediaPipe in fresh worker processes; the best run is warm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

_util.ensure_repo_on_path()

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from datasets.pose import INSTALL_HINT, mediapipe_available, pose_from_path  # noqa: E402
from distributed.core.runtime import print_table  # noqa: E402

MARKER = "BENCH_RESULT "
CANVAS_H, CANVAS_W, N_FRAMES = 400, 512, 24


def people() -> list[np.ndarray]:
    """RGB photos of real people shipped with scikit-image and matplotlib."""
    from matplotlib import cbook
    from skimage import data

    hopper = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return [
        data.astronaut(),
        cv2.cvtColor(hopper, cv2.COLOR_BGR2RGB),
        cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2RGB),
    ]


def moving_clip(photo: np.ndarray, phase: int, n_frames: int = N_FRAMES) -> np.ndarray:
    """(n_frames, H, W, 3): the photo moving right and down and growing; ``phase`` varies the
    path a little so no two videos are identical."""
    frames = np.full((n_frames, CANVAS_H, CANVAS_W, 3), 96, np.uint8)
    for t in range(n_frames):
        s = 0.45 + 0.15 * t / (n_frames - 1)
        w, h = round(photo.shape[1] * s), round(photo.shape[0] * s)
        x0, y0 = 10 + 6 * t - phase, 10 + t + phase
        small = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        frames[t, y0 : y0 + h, x0 : x0 + w] = small[: CANVAS_H - y0, : CANVAS_W - x0]
    return frames


def write_videos(folder: Path, n_videos: int, n_frames: int = N_FRAMES) -> list[str]:
    from datasets.synthetic import write_video

    photos = people()
    paths = []
    for i in range(n_videos):
        frames = moving_clip(photos[i % len(photos)], phase=i // len(photos), n_frames=n_frames)
        paths.append(str(write_video(folder / f"clip{i:02d}.avi", frames, quality=90)))
    return paths


def _pose_row(row: dict) -> dict:
    """Ray task: one video -> its frame count and how many frames had a person."""
    cv2.setNumThreads(1)
    seq = pose_from_path(row["path"])
    found = int((seq.confidence > 0).any(axis=1).sum())
    return {"path": row["path"], "frames": len(seq.joints), "found": found}


def child_main(num_cpus: int, repeats: int, paths: list[str]) -> int:
    """Subprocess body: a local Ray with ``num_cpus``; the job of tasks ``repeats`` times."""
    t0 = time.perf_counter()
    ray = _util.start_ray(num_cpus)
    ray_start = time.perf_counter() - t0
    task = ray.remote(num_cpus=1)(_pose_row)
    jobs, frames, found = [], 0, 0
    for _ in range(repeats):
        t = time.perf_counter()
        rows = ray.get([task.remote({"path": p}) for p in paths])
        jobs.append(time.perf_counter() - t)
        frames, found = sum(r["frames"] for r in rows), sum(r["found"] for r in rows)
    ray.shutdown()
    result = {"ray_start_s": ray_start, "jobs_s": jobs, "frames": frames, "found": found}
    print(MARKER + json.dumps(result), flush=True)
    return 0


def run_ray(num_cpus: int, repeats: int, paths: list[str], scratch: Path) -> dict:
    """The Ray job(s) in a fresh subprocess (own Ray instance); its log in scratch."""
    cmd = [sys.executable, os.path.abspath(__file__), "_child", str(num_cpus), str(repeats)]
    env = _util.ray_env(scratch)
    env.update(OMP_NUM_THREADS="1")
    log_path = scratch / f"ray{num_cpus}.log"
    with open(log_path, "w") as log:
        proc = subprocess.run(
            cmd + [json.dumps(paths)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=scratch
        )
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        print(log_path.read_text()[-3000:])
        raise RuntimeError(f"Ray run with {num_cpus} CPUs failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(MARKER) :])


def run_loop(paths: list[str], repeats: int) -> dict:
    """The baseline: pose_from_path on every video in this process, ``repeats`` times."""
    cv2.setNumThreads(1)
    jobs, cpu, frames, found = [], [], 0, 0
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        seqs = [pose_from_path(p) for p in paths]
        jobs.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        frames = sum(len(s.joints) for s in seqs)
        found = sum(int((s.confidence > 0).any(axis=1).sum()) for s in seqs)
    return {"jobs_s": jobs, "cpu_s": cpu, "frames": frames, "found": found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 videos, 1 run per setting")
    parser.add_argument(
        "--smoke", action="store_true", help="2 videos x 4 frames, 1 run each (a test runs it)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    if not mediapipe_available():
        print(f"benchmarks/pose.py skipped: {INSTALL_HINT}")
        return 0
    n_videos, repeats = (6, 1) if args.quick else (12, 2)
    n_frames = N_FRAMES
    if args.smoke:
        n_videos, repeats, n_frames = 2, 1, 4
    print(_util.machine_load(), flush=True)
    with _util.scratch_dir(keep=args.keep) as scratch:
        paths = write_videos(scratch, n_videos, n_frames)
        loop = run_loop(paths, repeats)
        rays = {n: run_ray(n, repeats, paths, scratch) for n in (1, 2)}
    base_fps = loop["frames"] / min(loop["jobs_s"])
    best = int(np.argmin(loop["jobs_s"]))
    rows = [
        (
            "loop (1 process)",
            f"{min(loop['jobs_s']):.2f}",
            f"{base_fps:.1f}",
            "1.00x",
            f"{loop['found']}/{loop['frames']}",
            f"CPU/wall {loop['cpu_s'][best] / loop['jobs_s'][best]:.2f}",
        )
    ]
    for n, r in rays.items():
        fps = r["frames"] / min(r["jobs_s"])
        runs = " ".join(f"{s:.1f}" for s in r["jobs_s"])
        rows.append(
            (
                f"Ray tasks, {n} CPU{'s' if n > 1 else ''}",
                f"{min(r['jobs_s']):.2f}",
                f"{fps:.1f}",
                f"{fps / base_fps:.2f}x",
                f"{r['found']}/{r['frames']}",
                f"runs {runs} s, Ray start {r['ray_start_s']:.1f} s",
            )
        )
    print(f"\n{n_videos} videos x {n_frames} frames of {CANVAS_W}x{CANVAS_H}, best of {repeats}")
    print_table(rows, ("setting", "time s", "frames/s", "vs loop", "person found", "notes"))
    one, two = (rays[n]["frames"] / min(rays[n]["jobs_s"]) for n in (1, 2))
    print(f"Ray 2 CPUs vs 1 CPU: {two / one:.2f}x")
    print(_util.machine_load())
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        sys.exit(child_main(int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])))
    sys.exit(main())
