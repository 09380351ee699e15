"""``benchmarks/gpu.py --smoke``: every section runs (on a CPU too), the JSON holds each one's
result, and the script needs nothing the GPU machine lacks (Ray, pandas, scikit-learn, Optuna).

The script runs once per module, as a user runs it, with those packages made unimportable (a
``sitecustomize`` on ``PYTHONPATH`` that fails their import as if they were not installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "train_steps",
    "host_sync",
    "precision_agreement",
    "gesture",
    "export",
    "clip_shards",
    "collective",
    "epoch_loop",
}
ABSENT_ON_GPU_MACHINE = ("ray", "pandas", "sklearn", "optuna")
CPU_FP16_SKIP = "skipped: fp16 on CPU"

BLOCKER = f'''
import sys
from importlib.machinery import PathFinder

ABSENT = {set(ABSENT_ON_GPU_MACHINE)!r}


class _PathFinderWithout(PathFinder):
    """The path finder, blind to the packages the GPU machine lacks: they are not found, exactly
    as if they were not installed (``importlib.util.find_spec`` gives None, import fails)."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [_PathFinderWithout if f is PathFinder else f for f in sys.meta_path]
'''


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(completed process, the JSON summary or None, wall seconds) of one smoke run."""
    tmp = tmp_path_factory.mktemp("gpu-smoke")
    (tmp / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp), env.get("PYTHONPATH")) if p)
    out = tmp / "smoke.json"
    cmd = [sys.executable, "benchmarks/gpu.py", "--smoke", "--json", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    seconds = time.perf_counter() - t0
    return proc, json.loads(out.read_text()) if out.exists() else None, seconds


def test_smoke_run_exits_zero_and_prints_every_table(smoke):
    proc, report, seconds = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report is not None
    for name in SECTIONS:
        assert f") {name}: " in proc.stdout, name
    assert "torch" in proc.stdout.splitlines()[0]  # the versions line comes first
    assert seconds < 240, f"the smoke run took {seconds:.0f} s"


def test_every_section_is_in_the_json_and_ran(smoke):
    _, report, _ = smoke
    sections = report["sections"]
    assert SECTIONS <= set(sections)
    for name in SECTIONS:
        out = sections[name]
        assert out["status"] == "ok", f"{name}: {out.get('error')}\n{out.get('traceback', '')}"
        assert out["table"]["rows"], name
    # the collective went through the loop's code path on the device, a CPU tensor too
    kinds = sections["collective"]["collectives"]
    assert kinds == {"cpu/float64": 1, "cpu/float32": 1}, kinds  # epoch stats, the CPU tensor
    loop = sections["epoch_loop"]
    assert loop["videos"] == 24 and len(loop["epoch_seconds"]) == 2
    assert 0 <= loop["data_wait_fraction"][-1] < 1 and loop["loop_vs_step"] > 0
    assert report["failed"] == []
    env = report["environment"]
    for key in ("device", "device_name", "torch", "cuda", "cudnn", "nccl", "git_commit"):
        assert key in env, key


def test_the_script_imports_nothing_the_gpu_machine_lacks(smoke):
    _, report, _ = smoke
    assert report["modules"]["ray_imported"] is False
    assert report["modules"]["not_allowed_imported"] == []
    assert not set(ABSENT_ON_GPU_MACHINE) & set(report["modules"]["third_party"])


def test_training_step_matrix_runs_every_case(smoke):
    _, report, _ = smoke
    cases = report["sections"]["train_steps"]["cases"]
    models = {"sistcm", "resnet18", "resnet_tlstm"}
    keys = {(c["model"], c["precision"], c["benchmark"]) for c in cases}
    assert keys == {
        (m, p, b) for m in models for p in ("fp32", "fp16", "bf16") for b in (True, False)
    }
    cpu = report["environment"]["device"] == "cpu"
    for c in cases:
        if cpu and c["status"].startswith(CPU_FP16_SKIP):
            continue
        assert c["status"] == "ran", c
        assert c["ms_per_step"] > 0 and c["flops_per_step"] > 0 and c["frames_per_s"] > 0
    assert any(c["precision"] == "fp16" and c["status"] == "ran" for c in cases)
    flops = {c["model"]: c["flops_per_step"] for c in cases if c["status"] == "ran"}
    # SISTCM runs each block's conv2 twice: about 1.5x the plain ResNet-18's FLOPs
    assert 1.3 < flops["sistcm"] / flops["resnet18"] < 1.7


def test_sections_report_their_measurements(smoke):
    _, report, _ = smoke
    s = report["sections"]
    assert set(s["host_sync"]["ms_per_step"]) == {
        "sync every step",
        "on device (bincount)",
        "on device (index_add_)",
    }
    for variant in ("tf32", "fp16", "bf16"):
        heads = s["precision_agreement"]["variants"][variant]["heads"]
        assert set(heads) == {"p1", "p2", "p3", "fused", "sum"}
        assert all(0.0 <= h["argmax_agreement"] <= 1.0 for h in heads.values())
    assert s["gesture"]["representation_max_abs_diff"] == 0.0
    assert s["export"]["steps"]["export_checkpoint"]["ok"]
    assert s["export"]["load_max_abs_diff"] <= 1e-4
    assert all(s["clip_shards"]["checks"].values())
