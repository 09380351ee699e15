"""The synthetic demo sets: written once, preprocessed through the real Ray Data job."""

from __future__ import annotations

import shutil

from branches import get_branch
from datasets import storage
from datasets.manifest import MANIFEST, ManifestError, read_manifest
from distributed.core.runtime import REPO_ROOT


def demo_shards(branch: str, smoke: bool) -> str:
    """Generate (once) the branch's synthetic demo set and preprocess it; returns the shards.

    The folder names carry the recipe (subjects x videos per class, crop size), so a cache
    written by another version of the recipe is never reused.
    """
    from distributed import preprocess

    b = get_branch(branch)
    demo = b.demo
    base = REPO_ROOT / "demo_data"
    raw = base / "raw" / f"{b.name}-{demo.subjects}x{demo.per_class}"
    if not raw.exists() or not any(raw.rglob("*.*")):
        demo.write(raw, n_subjects=demo.subjects, per_class=demo.per_class, seed=0)
    extra = demo.smoke_preprocess_args if smoke else demo.preprocess_args
    suffix = "".join(f"-s{v}" for k, v in zip(extra[::2], extra[1::2]) if k == "--size")
    out = base / "shards" / f"{raw.name}{suffix}"
    if storage.exists(str(out / MANIFEST)):
        try:
            read_manifest(str(out))
        except ManifestError:  # a cache written by an older version: ours to redo
            shutil.rmtree(out)
    if not storage.exists(str(out / MANIFEST)):
        argv = [
            b.name,
            "--source",
            str(raw),
            "--layout",
            "folders",
            "--out",
            str(out),
            "--folds",
            "3",
            "--inner-folds",
            "2",
            *extra,
        ]
        code = preprocess.main(argv)
        if code != 0:
            raise RuntimeError(f"preprocessing the demo set failed (exit {code})")
    return str(out)
