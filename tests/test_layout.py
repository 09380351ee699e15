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


RAY_FREE_ROOMS = ("core", "training", "inference", "results")


def _room_modules(room: str) -> list[str]:
    """Every module of a room of distributed/, but its Ray adapters (named ``ray_*``)."""
    folder = ROOT / "distributed" / room
    return [f"distributed.{room}.{p.stem}" for p in sorted(folder.glob("*.py"))
            if p.stem != "__init__" and not p.stem.startswith("ray_")]  # fmt: skip


@pytest.mark.parametrize("room", RAY_FREE_ROOMS)
def test_ray_free_rooms_import_no_ray(room):
    """Each Ray-free room of distributed/ (its Ray adapters ``ray_*`` aside), imported whole,
    loads no Ray; so do the evaluate, predict and export commands and the branches."""
    import subprocess
    import sys

    modules = _room_modules(room) + ["distributed.evaluate", "distributed.predict",
                                     "distributed.export", "branches"]  # fmt: skip
    assert len(modules) > 4
    code = f"import sys; import {', '.join(modules)}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(ROOT))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", modules


def test_distributed_holds_commands_at_the_top_and_machinery_in_rooms():
    """The top of distributed/ holds only entry points (``python -m distributed.<verb>``); the
    rest lives in rooms named for what they do."""
    top = {p.stem for p in (ROOT / "distributed").glob("*.py")} - {"__init__"}
    for name in top:
        assert "def main(" in (ROOT / "distributed" / f"{name}.py").read_text(), name
    rooms = {p.name for p in (ROOT / "distributed").iterdir() if (p / "__init__.py").exists()}
    assert rooms == {"core", "training", "search", "inference", "results", "preprocessing"}


def _readme_commands() -> list[str]:
    import re

    text = (ROOT / "README.md").read_text()
    return sorted(set(re.findall(r"python -m (distributed\.\w+)", text)))


@pytest.mark.parametrize("module", _readme_commands())
def test_every_command_in_the_readme_has_an_argparse_help(module, capsys):
    """Each ``python -m distributed.<verb>`` the README names prints its help, whose synopsis
    argparse writes: no module docstring carries a hand-written usage line that could drift."""
    import importlib

    mod = importlib.import_module(module)
    for line in (mod.__doc__ or "").splitlines():
        assert not line.startswith("    python -m "), f"{module}: hand-written usage: {line!r}"
    with pytest.raises(SystemExit) as stop:
        mod.main(["--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module}")


def test_the_layout_registry_is_what_preprocess_folds_and_the_readme_offer():
    """One registry (datasets.layouts): preprocess's --layout choices, the protocols folds can
    write, and the README's datasets table all come from (or list) the same layouts."""
    from datasets.layouts import LAYOUTS, RELEASES
    from distributed import folds, preprocess

    layout = next(a for a in preprocess.build_parser()._actions if a.dest == "layout")
    assert tuple(layout.choices) == LAYOUTS
    assert set(RELEASES) <= set(folds.KEYS)
    readme = (ROOT / "README.md").read_text()
    for key in LAYOUTS:
        assert f"| `{key}`" in readme, f"the README's datasets table lacks the {key} layout"


def test_the_repository_root_is_where_the_code_says():
    """Ray workers get REPO_ROOT on their PYTHONPATH and the demo sets live under it: a module
    moved into a room must not move it (it once pointed at distributed/)."""
    from distributed.core.runtime import REPO_ROOT
    from distributed.preprocessing import demo

    assert REPO_ROOT == ROOT
    assert (REPO_ROOT / "branches").is_dir() and (REPO_ROOT / "distributed").is_dir()
    assert demo.__file__.startswith(str(ROOT / "distributed"))
