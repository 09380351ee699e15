"""Evaluation protocols as one typed result: outer train/test folds, each with inner train/val
splits drawn inside its training part only.

Epochs and hyperparameters are chosen on the inner validation splits, never on the outer test
fold (the reference code of Wei et al. 2024 picks its reported epoch on the test fold itself).
Builders:

- ``subjects``: subject-independent, class-stratified nested folds (``datasets.folds``).
- ``from_lists``: outer folds from reference ``trainN`` / ``evalN`` lists (CK+), which must be
  subject-disjoint when subjects are known.
- ``official``: outer folds given by a release (DFEW / MAFW 5 sets, FERV39k one split).

Inner splits, for ``from_lists`` and ``official``: subject-disjoint (``folds.subject_kfold`` with
seed ``seed + 1 + i`` for outer fold i, as ``folds.nested_from_test_folds`` does) when every item
has a subject, otherwise stratified by class: each class's ids, shuffled with that seed, are dealt
round-robin to the inner folds (one running counter over the classes, so fold sizes differ by at
most one). ``description`` records which one was used. Stratified inner splits the data cannot
fill do not fail: a class with fewer training items than splits is dealt to some validation
splits only, and an outer train set smaller than ``inner_folds`` gives fewer splits; each such
fallback is one line of ``Protocol.warnings`` and is named in the description. ``ProtocolError``
says in one line why the data cannot fill a protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from datasets import folds as folds_mod
from datasets.records import SourceItem


class ProtocolError(ValueError):
    """The data cannot fill the protocol, or a protocol is malformed (one-line message)."""


def _ids(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(str(v) for v in values))


@dataclass(frozen=True)
class InnerSplit:
    """One inner split of an outer training set (ids sorted)."""

    train: tuple[str, ...]
    val: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", _ids(self.train))
        object.__setattr__(self, "val", _ids(self.val))


@dataclass(frozen=True)
class OuterSplit:
    """One outer fold: ``test`` held out, ``train`` and its inner splits (ids sorted)."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    inner: tuple[InnerSplit, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", _ids(self.train))
        object.__setattr__(self, "test", _ids(self.test))
        object.__setattr__(self, "inner", tuple(self.inner))

    def inner_split(self, j: int, where: str = "") -> InnerSplit:
        """Inner split ``j``, range-checked."""
        if not 0 <= j < len(self.inner):
            raise ProtocolError(
                f"{where}inner split {j} does not exist: this outer fold has "
                f"{len(self.inner)} (0..{len(self.inner) - 1})"
            )
        return self.inner[j]


@dataclass(frozen=True)
class Protocol:
    """A named evaluation protocol: outer folds with inner splits, as item ids. ``warnings``:
    where the data made a builder depart from what was asked (inner splits stratified only where
    possible, fewer inner splits), one line each; the description says it too."""

    name: str
    description: str
    outer: tuple[OuterSplit, ...]
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "outer", tuple(self.outer))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    def fold(self, i: int) -> OuterSplit:
        """Outer fold ``i``, range-checked (a clear error instead of an IndexError)."""
        if not 0 <= i < len(self.outer):
            raise ProtocolError(
                f"{self.name}: outer fold {i} does not exist; the folds are "
                f"0..{len(self.outer) - 1}"
            )
        return self.outer[i]

    def to_json(self) -> dict:
        """``{"name", "description", "outer": [{"train", "test", "inner": [{"train", "val"}]}]}``
        (ids sorted)."""
        body = {
            "name": self.name,
            "description": self.description,
            "outer": [
                {
                    "train": list(f.train),
                    "test": list(f.test),
                    "inner": [{"train": list(s.train), "val": list(s.val)} for s in f.inner],
                }
                for f in self.outer
            ],
        }
        if self.warnings:
            body["warnings"] = list(self.warnings)
        return body

    @classmethod
    def from_json(cls, obj: Mapping) -> Protocol:
        """Inverse of ``to_json`` (``ProtocolError`` for a malformed document)."""

        def field(d, key: str, where: str):
            if not isinstance(d, Mapping) or key not in d:
                raise ProtocolError(f"protocol JSON: {where} has no {key!r}")
            return d[key]

        def ids(d, key: str, where: str) -> tuple[str, ...]:
            value = field(d, key, where)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ProtocolError(f"protocol JSON: {where}.{key} is not a list of id strings")
            return tuple(value)

        if not isinstance(field(obj, "outer", "document"), list):
            raise ProtocolError("protocol JSON: 'outer' is not a list")
        outer = []
        for i, f in enumerate(obj["outer"]):
            inner_docs = field(f, "inner", f"outer[{i}]")
            if not isinstance(inner_docs, list):
                raise ProtocolError(f"protocol JSON: outer[{i}].inner is not a list")
            inner = []
            for j, s in enumerate(inner_docs):
                where = f"outer[{i}].inner[{j}]"
                inner.append(InnerSplit(ids(s, "train", where), ids(s, "val", where)))
            train, test = ids(f, "train", f"outer[{i}]"), ids(f, "test", f"outer[{i}]")
            outer.append(OuterSplit(train, test, inner))
        name, description = field(obj, "name", "document"), field(obj, "description", "document")
        warnings = obj.get("warnings", [])
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            raise ProtocolError("protocol JSON: 'warnings' is not a list of strings")
        return cls(str(name), str(description), tuple(outer), tuple(warnings))

    def validate(self, ids: Iterable[str], subjects: Mapping[str, str] | None = None) -> None:
        """Raise ``ProtocolError`` unless: every id of the protocol is in ``ids``; in each outer
        fold train and test are disjoint and together cover ``ids``; no id is in two outer test
        folds; each inner split's train and val are disjoint and cover the outer train set. With
        ``subjects`` ({id: subject}), also no subject on both sides of any outer or inner split."""
        known = list(ids)
        universe = set(known)
        if len(universe) != len(known):
            raise ProtocolError("validate: the dataset's ids are not unique")
        tested: dict[str, int] = {}
        for i, f in enumerate(self.outer):
            where = f"{self.name}: outer fold {i}"
            _check_split(where, "train", f.train, "test", f.test, universe, subjects)
            if set(f.train) | set(f.test) != universe:
                missing = sorted(universe - set(f.train) - set(f.test))
                raise ProtocolError(f"{where}: {len(missing)} id(s) in neither part: {missing[:3]}")
            for x in f.test:
                if x in tested:
                    raise ProtocolError(f"{where}: {x!r} is also tested in outer fold {tested[x]}")
                tested[x] = i
            for j, s in enumerate(f.inner):
                inner_where = f"{where}, inner split {j}"
                _check_split(inner_where, "train", s.train, "val", s.val, set(f.train), subjects)
                if set(s.train) | set(s.val) != set(f.train):
                    raise ProtocolError(f"{inner_where}: train + val do not cover the outer train")


def _check_split(where, a_name, a, b_name, b, universe, subjects) -> None:
    for name, part in ((a_name, a), (b_name, b)):
        if len(set(part)) != len(part):
            raise ProtocolError(f"{where}: {name} lists an id twice")
        unknown = sorted(set(part) - universe)
        if unknown:
            raise ProtocolError(f"{where}: {name} has {len(unknown)} unknown id(s): {unknown[:3]}")
    both = sorted(set(a) & set(b))
    if both:
        raise ProtocolError(f"{where}: {len(both)} id(s) in both {a_name} and {b_name}: {both[:3]}")
    if subjects is not None:
        shared = sorted({subjects[x] for x in a} & {subjects[x] for x in b})
        if shared:
            raise ProtocolError(f"{where}: subject(s) on both sides: {shared[:3]}")


def _check_inner_k(inner_folds: int) -> None:
    if inner_folds < 2:
        raise ProtocolError(f"inner_folds must be >= 2, got {inner_folds}")


def subjects(
    ids: Sequence[str],
    subjects: Sequence[str],
    labels: Sequence,
    folds: int = 5,
    inner_folds: int = 3,
    seed: int = 0,
) -> Protocol:
    """Subject-independent, class-stratified nested folds (``folds.nested_splits``): the folds
    the preprocess job has written into manifests so far, named "subject-independent 5x3-fold"."""
    n = len(ids)
    if len(subjects) != n or len(labels) != n:
        raise ProtocolError(f"{n} ids but {len(subjects)} subjects and {len(labels)} labels")
    if len(set(ids)) != n:
        raise ProtocolError("ids are not unique")
    _check_inner_k(inner_folds)
    try:
        nested = folds_mod.nested_splits(list(subjects), list(labels), folds, inner_folds, seed)
    except ValueError as e:
        raise ProtocolError(f"cannot build {folds}x{inner_folds} subject folds: {e}") from None
    names = np.asarray(ids, dtype=object)
    outer = tuple(
        OuterSplit(
            names[f.train],
            names[f.test],
            tuple(InnerSplit(names[s.train], names[s.val]) for s in f.inner),
        )
        for f in nested
    )
    description = (
        f"{folds} subject-independent, class-stratified outer folds (greedy, seed {seed}); "
        f"{inner_folds} subject-disjoint inner train/val splits inside each outer train set"
    )
    return Protocol(f"subject-independent {folds}x{inner_folds}-fold", description, outer)


def _stratified_inner(
    train: Sequence[str], label_of: Mapping[str, str], k: int, seed: int
) -> tuple[list[tuple[str, ...]], dict[str, int]]:
    """k val folds of ``train``: per class (sorted names), shuffled ids dealt round-robin; and
    the classes with fewer than k items ({label: count}), which some val folds lack."""
    by_class: dict[str, list[str]] = {}
    for x in sorted(train):
        by_class.setdefault(str(label_of[x]), []).append(x)
    rng = np.random.default_rng(seed)
    vals: list[list[str]] = [[] for _ in range(k)]
    dealt = 0
    for label in sorted(by_class):
        members = by_class[label]
        for pos in rng.permutation(len(members)):
            vals[dealt % k].append(members[pos])
            dealt += 1
    rare = {label: len(m) for label, m in sorted(by_class.items()) if len(m) < k}
    return [tuple(v) for v in vals], rare


def _nested_outer(
    outer: Sequence[tuple[Sequence[str], Sequence[str]]],
    items: Sequence[SourceItem],
    inner_folds: int,
    seed: int,
    name: str,
    subject_disjoint_outer: bool,
) -> tuple[tuple[OuterSplit, ...], str, list[str]]:
    """(outer splits, how the inner splits were drawn, warnings). Without subjects, inner splits
    the data cannot stratify fall back rather than fail: fewer splits when an outer train set is
    smaller than ``inner_folds``, and a class with fewer training items than splits is dealt to
    some validation splits only (each such fallback is a warning)."""
    _check_inner_k(inner_folds)
    by_id = {it.id: it for it in items}
    if len(by_id) != len(items):
        raise ProtocolError(f"{name}: item ids are not unique")
    use_subjects = bool(items) and all(it.subject for it in items)
    k, warnings, unstratified = inner_folds, [], []
    smallest = min((len(set(train)) for train, _ in outer), default=0)
    if not use_subjects and 2 <= smallest < inner_folds:
        k = smallest
        warnings.append(f"{name}: {k} inner splits instead of {inner_folds}: the smallest outer "
                        f"train set holds {smallest} items")  # fmt: skip
    out = []
    for i, (train, test) in enumerate(outer):
        where = f"{name}: outer fold {i}"
        unknown = sorted(set(train) - by_id.keys() | set(test) - by_id.keys())
        if unknown:
            raise ProtocolError(f"{where}: {len(unknown)} id(s) not among the items: {unknown[:3]}")
        if not train or not test:
            raise ProtocolError(f"{where}: empty {'train' if not train else 'test'} set")
        both = sorted(set(train) & set(test))
        if both:
            raise ProtocolError(f"{where}: {len(both)} id(s) in both train and test: {both[:3]}")
        train = sorted(train)
        if use_subjects:
            if subject_disjoint_outer:
                leaked = {by_id[x].subject for x in train} & {by_id[x].subject for x in test}
                if leaked:
                    raise ProtocolError(
                        f"{where}: subjects in train and test: {sorted(leaked)[:3]}"
                    )
            subj = [by_id[x].subject for x in train]
            try:
                val_idx = folds_mod.subject_kfold(
                    subj, [by_id[x].label for x in train], inner_folds, seed + 1 + i
                )
            except ValueError as e:
                raise ProtocolError(f"{where}: {e}") from None
            vals = [tuple(train[j] for j in v) for v in val_idx]
        else:
            if len(train) < 2:
                raise ProtocolError(f"{where}: {len(train)} training item, too few for inner "
                                    "train/val splits")  # fmt: skip
            label_of = {x: by_id[x].label for x in train}
            vals, rare = _stratified_inner(train, label_of, k, seed + 1 + i)
            if rare:
                named = ", ".join(f"{label!r} ({n})" for label, n in rare.items())
                unstratified.append(f"outer fold {i}: {named}")
                warnings.append(
                    f"{where}: inner splits stratified where possible: class(es) {named} have "
                    f"fewer training items than the {k} inner splits, so some validation "
                    "splits lack them"
                )
        inner = tuple(InnerSplit(sorted(set(train) - set(v)), v) for v in vals)
        out.append(OuterSplit(train, test, inner))
    if use_subjects:
        how = f"{inner_folds} subject-disjoint inner train/val splits"
    else:
        how = f"{k} class-stratified inner train/val splits (no subject ids)"
        if k < inner_folds:
            how += f", {k} instead of the {inner_folds} asked (a small outer train set)"
    how += f" inside each outer train set, seed {seed} + 1 + fold"
    if unstratified:
        how += ("; stratified where possible, classes with fewer training items than splits: "
                + "; ".join(unstratified))  # fmt: skip
    return tuple(out), how, warnings


def from_lists(
    lists: Sequence[tuple[Sequence[str], Sequence[str]]],
    items: Sequence[SourceItem],
    inner_folds: int = 3,
    seed: int = 0,
    name: str = "CK+ 10-fold, reference lists",
    description: str = "outer folds: the reference's trainN / evalN lists",
) -> Protocol:
    """Outer folds from reference lists ((trainN ids, evalN ids) per fold, e.g. the ``folds``
    of ``datasets.reference_lists.ckplus_reference_folds``) plus inner splits of each trainN.
    When every item has a subject, the lists must be subject-disjoint (else ``ProtocolError``)."""
    outer, how, warnings = _nested_outer(
        lists, items, inner_folds, seed, name, subject_disjoint_outer=True
    )
    return Protocol(name, f"{description}; {how}", outer, warnings)


def official(
    outer: Sequence[tuple[Sequence[str], Sequence[str]]],
    items: Sequence[SourceItem],
    inner_folds: int = 3,
    seed: int = 0,
    name: str = "official",
    description: str = "outer folds: the release's official train/test sets",
) -> Protocol:
    """A release's official outer folds ((train ids, test ids) per set, e.g. ``LayoutScan.folds``
    with ``name=LayoutScan.name``) plus inner train/val splits drawn inside each train set."""
    folds, how, warnings = _nested_outer(
        outer, items, inner_folds, seed, name, subject_disjoint_outer=False
    )
    return Protocol(name, f"{description}; {how}", folds, warnings)
