"""The two package names that collide with PyPI packages must resolve to this repository."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["datasets", "distributed", "models"])
def test_package_resolves_to_repository(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == ROOT / name


def test_models_import_neither_ray_nor_datasets():
    for path in (ROOT / "models").glob("*.py"):
        text = path.read_text()
        for banned in ("import ray", "from ray", "import datasets", "from datasets", ".cuda("):
            assert banned not in text, f"{path.name} contains {banned!r}"


def test_the_core_imports_no_ray():
    """Config, steps, checkpoints, collates, evaluation, the Predictor, export, plots, the
    training loop, its in-process hosts and the streamed reader are Ray-free: importing them
    (and the evaluate/predict/export CLIs) must not load Ray."""
    import subprocess
    import sys

    code = (
        "import sys; import distributed.evaluate, distributed.predict, distributed.export, "
        "distributed.predictor, distributed.plots, distributed.loop, distributed.local_mode, "
        "distributed.stream, distributed.run_file, distributed.resources_check, branches; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(ROOT))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
