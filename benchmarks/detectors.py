"""Face detectors side by side: OpenCV Haar (the default) vs MediaPipe short / full range.

    .venv/bin/python benchmarks/detectors.py            # 3 timing passes
    .venv/bin/python benchmarks/detectors.py --quick    # 1 timing pass
    .venv/bin/python benchmarks/detectors.py --smoke    # 10 faces + 10 non-faces, 1 pass, 1 scale

(a) scikit-image's ``lfw_subset`` (100 faces, then 100 non-faces, 25 px, upscaled to 128 px as in
    tests/test_faces.py): faces found, non-faces fired on, and ms per image (the median over the
    timing passes of one pass over the 200 images / 200; the graph is built before timing), wall
    and CPU (all of this process's threads). The ratio is against Haar's wall ms in the same run.
(b) Small faces: the astronaut, Grace Hopper and the cameraman (in profile) scaled to 0.3-1.0x
    in the top-left corner of a 640x600 grey frame; faces found per photo and scale.

MediaPipe is optional (``make pose``); without it only the Haar rows are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

_util.ensure_repo_on_path()

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from datasets import faces  # noqa: E402
from datasets.pose import INSTALL_HINT, mediapipe_available  # noqa: E402
from distributed.core.runtime import print_table  # noqa: E402

SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)


def lfw_images(per_kind: int = 100) -> list[np.ndarray]:
    """The first ``per_kind`` faces, then the first ``per_kind`` non-faces of lfw_subset (100
    of each) as 128 px uint8 grey."""
    from skimage import data

    images = (data.lfw_subset() * 255).round().astype(np.uint8)  # (200, 25, 25)
    images = np.concatenate([images[:per_kind], images[100 : 100 + per_kind]])
    return [cv2.resize(im, (128, 128), interpolation=cv2.INTER_LINEAR) for im in images]


def people() -> dict[str, np.ndarray]:
    """Grey photos of real people shipped with scikit-image and matplotlib."""
    from matplotlib import cbook
    from skimage import data

    hopper = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return {
        "astronaut": cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY),
        "hopper": cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY),
        "cameraman": data.camera(),
    }


def rates(detector, images: list[np.ndarray], passes: int) -> tuple[int, int, float, float]:
    """(faces found of the first half, non-faces fired on of the second half, median wall ms and
    median CPU ms (all threads of this process) per image)."""
    half = len(images) // 2
    found = np.array([len(detector.detect(im)) > 0 for im in images])  # also warms the graph
    wall, cpu = [], []
    for _ in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        for im in images:
            detector.detect(im)
        wall.append((time.perf_counter() - t0) / len(images) * 1e3)
        cpu.append((time.process_time() - c0) / len(images) * 1e3)
    return int(found[:half].sum()), int(found[half:].sum()), _util.median(wall), _util.median(cpu)


def small_faces(detector, photos: dict[str, np.ndarray], scales=SCALES) -> list[str]:
    """Per scale, the number of faces found in each photo ("1/1/0" = astronaut/hopper/camera)."""
    out = []
    for s in scales:
        counts = []
        for photo in photos.values():
            frame = np.full((600, 640), 96, np.uint8)
            w, h = round(photo.shape[1] * s), round(photo.shape[0] * s)
            small = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)[:600, :640]
            frame[: small.shape[0], : small.shape[1]] = small
            counts.append(str(len(detector.detect(frame))))
        out.append("/".join(counts))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timing pass instead of three")
    parser.add_argument(
        "--smoke", action="store_true", help="10 + 10 images, 1 pass, 1 scale (a test runs it)"
    )
    args = parser.parse_args(argv)
    passes = 1 if args.quick or args.smoke else 3
    per_kind, scales = (10, SCALES[-1:]) if args.smoke else (100, SCALES)
    cv2.setNumThreads(1)  # MediaPipe runs one image at a time on one thread; so does Haar here
    detectors = {"haar": faces.HaarDetector()}
    if mediapipe_available():
        detectors["mediapipe (short)"] = faces.make_detector("mediapipe")
        detectors["mediapipe-full"] = faces.make_detector("mediapipe-full")
    else:
        print(f"MediaPipe rows skipped: {INSTALL_HINT}\n")
    print(_util.machine_load())
    images, photos = lfw_images(per_kind), people()
    rows, base = [], None
    for name, det in detectors.items():
        hits, false, ms, cpu = rates(det, images, passes)
        base = base or ms
        rows.append(
            (
                name,
                f"{hits}/{per_kind}",
                f"{false}/{per_kind}",
                f"{ms:.2f}",
                f"{ms / base:.2f}x",
                f"{cpu:.2f}",
            )
        )
    print("\n(a) lfw_subset upscaled to 128 px")
    header = ("detector", "faces found", "non-faces fired", "ms/image", "vs haar", "CPU ms/image")
    print_table(rows, header)
    print("\n(b) faces found in a 640x600 frame: astronaut/hopper/cameraman (profile)")
    rows = [(name, *small_faces(det, photos, scales)) for name, det in detectors.items()]
    print_table(rows, ("detector", *(f"{s:.2f}x" for s in scales)))
    print(_util.machine_load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
