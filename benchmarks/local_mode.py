"""Fixed cost of a fit: Ray Train local mode (workers=0) against a 1-worker worker group.

    python benchmarks/local_mode.py [--epochs 2] [--rounds 2]

The same gesture fold (synthetic set, smoke model) is fitted alternately by both ways, so both
see the same machine load; printed per fit: wall time, time inside epochs, and the rest (start-up,
checkpoints, teardown). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    from datasets.manifest import read_manifest, read_protocol
    from datasets.synthetic_gesture import write_gesture_set
    from distributed import preprocess
    from distributed.common import init_ray
    from distributed.config import default_config
    from distributed.trainer import Resources, fit_folds, outer_fold_spec, prepare_datasets

    print("load average before:", os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="bench-local-"))
    init_ray(num_cpus=2)
    write_gesture_set(tmp / "raw", n_subjects=6, per_class=3, seed=0)
    argv = ["gesture", "--source", str(tmp / "raw"), "--out", str(tmp / "shards"),
            "--folds", "3", "--inner-folds", "2"]  # fmt: skip
    assert preprocess.main(argv) == 0
    shards = str(tmp / "shards")
    manifest = read_manifest(shards)
    key, protocol = read_protocol(shards, manifest)
    specs = [outer_fold_spec(protocol, key, 0, j) for j in range(2)]
    data = prepare_datasets(shards, specs, frozenset(protocol.fold(0).test))
    cfg = default_config("gesture", epochs=args.epochs, rep_size=32, rep_length=48, width=16,
                         se_reduction=4, batch_size=8, lr=1e-2)  # fmt: skip
    rows = []
    for r in range(args.rounds):
        for label, workers in (("worker group", 1), ("local mode", 0)):
            t0 = time.perf_counter()
            fit = fit_folds(cfg, data, resources=Resources(workers, cpus_per_worker=0.5),
                            storage_path=str(tmp / "runs"), name=f"{label[0]}{r}",
                            write_model=False)  # fmt: skip
            wall = time.perf_counter() - t0
            inside = float(fit.history["epoch_seconds"].sum())
            rows.append((label, wall, inside))
            print(f"round {r}: {label:12s} wall {wall:6.1f} s, in epochs {inside:5.1f} s, "
                  f"rest {wall - inside:5.1f} s", flush=True)  # fmt: skip
    for label in ("worker group", "local mode"):
        w = [x[1] for x in rows if x[0] == label]
        print(f"{label}: wall {min(w):.1f}-{max(w):.1f} s over {len(w)} fits")
    print("load average after:", os.getloadavg())


if __name__ == "__main__":
    main()
