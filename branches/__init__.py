"""The branch table: one module per modality (see ``branches/base.py`` for the interface).

Adding a modality means one new module with a :class:`~branches.base.Branch` subclass, one line
here, and its tests; the CLIs take their choices from :data:`BRANCHES`.
"""

from __future__ import annotations

from branches.base import Branch, DataInfo
from branches.facial import FACIAL
from branches.gesture import GESTURE

BRANCHES: dict[str, Branch] = {b.name: b for b in (FACIAL, GESTURE)}


def get_branch(name: str) -> Branch:
    """The branch called ``name`` (a clear error listing the known ones otherwise)."""
    try:
        return BRANCHES[name]
    except KeyError:
        raise ValueError(f"unknown branch {name!r}; choose one of {sorted(BRANCHES)}") from None


__all__ = ["BRANCHES", "Branch", "DataInfo", "get_branch"]
