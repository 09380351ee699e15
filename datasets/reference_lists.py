"""Reference-style ``trainN.txt`` / ``evalN.txt`` fold lists (lines ``<id> <Label>``), checked
against a scanned dataset; the CK+ lists of the paper's reference code (Wei et al. 2024) are one.

The lists are data, read where the caller keeps them; ``ckplus_reference_folds`` checks them
against ``datasets.sources.scan_ckplus`` (ids ``S005/001``, labels from CK+'s emotion files). Every
inconsistency is ``BadInput`` naming the list file and line; ids of the scan that no list mentions
are reported, not dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from datasets.layouts import OfficialFold
from datasets.records import BadInput, SourceItem
from datasets.sources import CKPLUS_CLASSES, Scan
from datasets.video import natural_key

CKPLUS_NAME = "CK+ 10-fold, reference lists"


class ReferenceFolds(NamedTuple):
    """Outer folds from reference lists (train = trainN, test = evalN, N = 1..k) and the ids of
    the scan that no list mentions (natural order)."""

    folds: tuple[OfficialFold, ...]
    unlisted: tuple[str, ...]


def _read_reference_list(
    path: Path, by_id: dict[str, SourceItem], canon: dict[str, str]
) -> dict[str, int]:
    """{id: line number} of one list, refusing malformed lines, unknown ids and labels."""
    if not path.is_file():
        raise BadInput(str(path), "missing reference list")
    out: dict[str, int] = {}
    text = path.read_text(errors="replace").lstrip("\ufeff")
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise BadInput(str(path), f"line {lineno}: expected '<id> <label>', got {line!r}")
        item_id, label = fields[0].strip("/"), fields[1]
        if label.lower() not in canon:
            known = ", ".join(canon.values())
            raise BadInput(str(path), f"line {lineno}: unknown label {label!r} (known: {known})")
        if item_id not in by_id:
            raise BadInput(str(path), f"line {lineno}: {item_id!r} is not in the scanned dataset")
        if by_id[item_id].label != canon[label.lower()]:
            raise BadInput(
                str(path),
                f"line {lineno}: {item_id!r} is {label!r} here but {by_id[item_id].label!r} in "
                f"the dataset's own labels ({by_id[item_id].path})",
            )
        if item_id in out:
            raise BadInput(str(path), f"line {lineno}: {item_id!r} repeats line {out[item_id]}")
        out[item_id] = lineno
    return out


def reference_folds(
    folder: str | Path, items: Sequence[SourceItem], classes: Sequence[str]
) -> ReferenceFolds:
    """Outer folds from a folder of reference ``trainN.txt`` / ``evalN.txt`` lists (lines
    ``<id> <Label>``), checked against the dataset's items.

    Label spellings map case-insensitively onto ``classes``. ``BadInput`` naming the list file and
    line for: a malformed line, an unknown label, an id not among ``items``, a label that
    disagrees with the item's, an id repeated in a list, in both trainN and evalN, or in two evalN.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(str(folder), "reference-list folder does not exist")
    numbers = sorted(
        int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"eval(\d+)\.txt", p.name))
    )
    if not numbers:
        raise BadInput(str(folder), "no evalN.txt files")
    if numbers != list(range(1, len(numbers) + 1)):
        raise BadInput(str(folder), f"eval lists are not numbered 1..k: {numbers}")
    by_id = {it.id: it for it in items}
    canon = {c.lower(): c for c in classes}
    owner: dict[str, tuple[int, int]] = {}  # id -> (eval list number, line)
    mentioned: set[str] = set()
    folds = []
    for n in numbers:
        train = _read_reference_list(folder / f"train{n}.txt", by_id, canon)
        test = _read_reference_list(folder / f"eval{n}.txt", by_id, canon)
        for item_id, lineno in test.items():
            if item_id in train:
                raise BadInput(
                    str(folder / f"eval{n}.txt"),
                    f"line {lineno}: {item_id!r} is also in train{n}.txt line {train[item_id]}",
                )
            if item_id in owner:
                m, line_m = owner[item_id]
                raise BadInput(
                    str(folder / f"eval{n}.txt"),
                    f"line {lineno}: {item_id!r} is also in eval{m}.txt line {line_m}",
                )
            owner[item_id] = (n, lineno)
        mentioned |= train.keys() | test.keys()
        folds.append(OfficialFold(tuple(sorted(train)), tuple(sorted(test))))
    unlisted = tuple(sorted(by_id.keys() - mentioned, key=natural_key))
    return ReferenceFolds(tuple(folds), unlisted)


def ckplus_reference_folds(scan: Scan | Sequence[SourceItem], folder: str | Path) -> ReferenceFolds:
    """The reference's 10 CK+ folds (``trainN`` / ``evalN``) checked against a ``scan_ckplus``
    result (ids ``S005/001``, labels from CK+'s emotion files); see ``reference_folds``."""
    items = scan.items if isinstance(scan, Scan) else scan
    return reference_folds(folder, items, CKPLUS_CLASSES)
