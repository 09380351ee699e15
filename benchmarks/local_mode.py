"""Fixed cost of a fit: Ray Train local mode (workers=0) against a 1-worker worker group.

    python benchmarks/local_mode.py [--epochs 2] [--rounds 2]
    python benchmarks/local_mode.py --smoke   # 1 round, 1 inner fold, 1 epoch, a smaller set

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
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per fold (2; smoke 1)")
    p.add_argument("--rounds", type=int, default=None, help="fits of each way (2; smoke 1)")
    p.add_argument("--smoke", action="store_true", help="toy sizes (a test runs it)")
    args = p.parse_args()
    epochs = args.epochs if args.epochs is not None else 1 if args.smoke else 2
    rounds = args.rounds if args.rounds is not None else 1 if args.smoke else 2
    per_class, inner = (1, 1) if args.smoke else (3, 2)
    from distributed.core.runtime import init_ray

    print("load average before:", os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-local-") as scratch:
        ray = init_ray(num_cpus=2)
        try:
            rows = measure(Path(scratch), epochs, rounds, per_class, inner)
        finally:
            ray.shutdown()
    for label in ("worker group", "local mode"):
        w = [x[1] for x in rows if x[0] == label]
        print(f"{label}: wall {min(w):.1f}-{max(w):.1f} s over {len(w)} fits")
    print("load average after:", os.getloadavg())


def measure(tmp: Path, epochs: int, rounds: int, per_class: int, inner: int) -> list[tuple]:
    """Preprocess the synthetic gestures, then fit ``inner`` inner folds of outer fold 0 both
    ways, alternated ``rounds`` times; (way, wall s, s inside epochs) per fit."""
    from datasets.manifest import read_manifest, read_protocol
    from datasets.synthetic_gesture import write_gesture_set
    from distributed import preprocess
    from distributed.core.config import default_config
    from distributed.training.launch import Resources, fit_folds, outer_fold_spec, prepare_datasets

    write_gesture_set(tmp / "raw", n_subjects=6, per_class=per_class, seed=0)
    argv = ["gesture", "--source", str(tmp / "raw"), "--out", str(tmp / "shards"),
            "--folds", "3", "--inner-folds", "2"]  # fmt: skip
    assert preprocess.main(argv) == 0
    shards = str(tmp / "shards")
    manifest = read_manifest(shards)
    key, protocol = read_protocol(shards, manifest)
    specs = [outer_fold_spec(protocol, key, 0, j) for j in range(inner)]
    data = prepare_datasets(shards, specs, frozenset(protocol.fold(0).test))
    cfg = default_config("gesture", epochs=epochs, rep_size=32, rep_length=48, width=16,
                         se_reduction=4, batch_size=8, lr=1e-2)  # fmt: skip
    rows = []
    for r in range(rounds):
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
    return rows


if __name__ == "__main__":
    main()
