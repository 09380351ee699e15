"""The branch table: one module per modality (see ``branches/base.py`` for the interface).

The two branches of the paper are registered here by name (``facial``, ``gesture``). A branch
that lives elsewhere, in a module of your own, is named by its import path, ``MODULE:NAME``
(``NAME`` a :class:`~branches.base.Branch` instance in ``MODULE``, whose ``name`` is that same
path): every command takes it where it takes ``facial`` or ``gesture``, and every process (Ray
workers included) finds it by importing ``MODULE``, since the shards and checkpoints record
it as their kind. ``tests/test_third_branch.py`` defines one entirely inside the test.
"""

from __future__ import annotations

import argparse
import importlib

from branches.base import Branch, DataInfo
from branches.facial import FACIAL
from branches.gesture import GESTURE

BRANCHES: dict[str, Branch] = {b.name: b for b in (FACIAL, GESTURE)}


def get_branch(name: str) -> Branch:
    """The branch called ``name``: a registered one, or ``MODULE:NAME`` imported (a clear error
    listing the known ones otherwise)."""
    if name in BRANCHES:
        return BRANCHES[name]
    if ":" not in name:
        raise ValueError(
            f"unknown branch {name!r}; choose one of {sorted(BRANCHES)} or name your own as "
            "MODULE:NAME"
        )
    module, _, attr = name.partition(":")
    try:
        branch = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"branch {name!r}: cannot import it ({err})") from None
    if not isinstance(branch, Branch):
        raise ValueError(f"branch {name!r}: {attr} is not a Branch instance")
    if branch.name != name:
        raise ValueError(f"branch {name!r}: its name is {branch.name!r}; name it {name!r}")
    return branch


def branch_arg(text: str) -> str:
    """argparse type of a BRANCH argument: a registered name or ``MODULE:NAME``."""
    try:
        get_branch(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


BRANCH_HELP = f"{' or '.join(sorted(BRANCHES))}, or a branch of your own as MODULE:NAME"

__all__ = ["BRANCHES", "BRANCH_HELP", "Branch", "DataInfo", "branch_arg", "get_branch"]
