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
