"""Face + body late fusion on the paired synthetic set: fused UAR against the better branch.

Runs the real protocol (``distributed.fusion.run_fusion``: both branches trained through Ray Train
on the inner splits and the outer training folds, the fusion weight chosen on inner validation
predictions, outer test folds scored) on a paired set where each modality alone is capped at 50%
UAR by construction. Prints face-only, body-only and fused pooled WAR/UAR and the ratio
fused UAR / best branch UAR (> 1 means fusion helps). This is the measured counterpart of the
`slow` test in tests/test_fusion.py.

    python benchmarks/fusion.py [--epochs 10] [--folds 2]
    python benchmarks/fusion.py --smoke   # 1 outer fold, 1 epoch, 1 video per subject and class,
                                          # fits in this process (no worker group)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per fit (10; smoke 1)")
    p.add_argument("--folds", type=int, default=None, help="outer folds scored, of 3 (2; smoke 1)")
    p.add_argument("--smoke", action="store_true", help="toy sizes (a test runs it)")
    args = p.parse_args()
    epochs = args.epochs if args.epochs is not None else 1 if args.smoke else 10
    folds = args.folds if args.folds is not None else 1 if args.smoke else 2
    per_class, n_frames = (1, 4) if args.smoke else (2, 8)

    from datasets.synthetic_paired import write_paired_set
    from distributed import fusion, preprocess
    from distributed.core.config import default_config
    from distributed.core.runtime import init_ray

    init_ray()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_paired_set(
            root / "raw", n_subjects=6, per_class=per_class, seed=0, size=96, n_frames=n_frames
        )
        out = {}
        for kind, sub, extra in (
            ("facial", "faces", ["--size", "32"]),
            ("gesture", "gestures", []),
        ):
            out[kind] = str(root / f"{kind}-shards")
            argv = [kind, "--source", str(root / "raw" / sub), "--out", out[kind], "--folds", "3",
                    "--inner-folds", "2", *extra]  # fmt: skip
            assert preprocess.main(argv) == 0
        facial = default_config("facial", model="resnet_tlstm", clips=2, frames=2, lstm1=16,
                                lstm2=8, dropout=0.0, head="p3", lr=0.05, batch_size=8,
                                epochs=epochs)  # fmt: skip
        gesture = default_config("gesture", rep_size=32, rep_length=48, width=16, se_reduction=4,
                                 batch_size=8, lr=1e-2, epochs=epochs)  # fmt: skip
        report = fusion.run_fusion(facial, gesture, out["facial"], out["gesture"],
                                   folds=folds, inner=1, storage_path=str(root / "runs"),
                                   name="bench", workers=0 if args.smoke else 1)  # fmt: skip
    s = {k: report["summary"][k]["pooled"] for k in ("face", "body", "fused")}
    print(fusion.markdown(report))
    print(f"{'':8s}{'WAR':>8s}{'UAR':>8s}")
    for k in ("face", "body", "fused"):
        print(f"{k:8s}{s[k]['war']:8.3f}{s[k]['uar']:8.3f}")
    best = max(s["face"]["uar"], s["body"]["uar"])
    ratio = s["fused"]["uar"] / best if best > 0 else float("nan")  # (a toy run may score 0)
    print(f"fused UAR / best branch UAR = {ratio:.2f}x "
          f"({time.time() - t0:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
