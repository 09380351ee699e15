"""Subject-independent, class-stratified folds and nested (outer test / inner validation) splits.

Folds are index arrays into the dataset's item list. ``subject_kfold`` assigns whole subjects to
folds greedily (largest subject first, to the fold whose class counts it brings closest to the
per-fold target), so no subject appears in two folds. ``nested_splits`` carves inner,
subject-disjoint train/validation splits out of every outer training fold: epochs and
hyperparameters are chosen on those, never on the outer test fold (the defect of the reference
code of Wei et al. 2024).
Reference fold lists (``trainN.txt`` / ``evalN.txt``) are read by ``datasets.reference_lists``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class InnerFold:
    """One inner split of an outer training fold: sorted index arrays, subject-disjoint."""

    train: np.ndarray
    val: np.ndarray


@dataclass(frozen=True, eq=False)
class OuterFold:
    """One outer fold: ``test`` (held out), ``train`` = the rest, and inner splits of ``train``."""

    test: np.ndarray
    train: np.ndarray
    inner: tuple[InnerFold, ...]


def subject_kfold(subjects: Sequence, labels: Sequence, k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` sorted test-index arrays; every item in exactly one, every subject in exactly one.

    Greedy stratification: subjects in decreasing size (ties in a seeded random order) go to the
    fold minimising the squared relative deviation of its class counts and size from the
    per-fold targets; ties go to the smaller fold. Every fold receives at least one subject.
    """
    subjects = np.asarray(subjects)
    labels = np.asarray(labels)
    if subjects.shape != labels.shape or subjects.ndim != 1:
        raise ValueError(f"subjects {subjects.shape} and labels {labels.shape} must be equal 1-D")
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    subj_names, subj_of = np.unique(subjects, return_inverse=True)
    _, class_of = np.unique(labels, return_inverse=True)
    n_subj, n_cls = len(subj_names), int(class_of.max()) + 1 if len(labels) else 0
    if n_subj < k:
        raise ValueError(f"{n_subj} distinct subjects cannot fill {k} subject-independent folds")
    counts = np.zeros((n_subj, n_cls))  # (subjects, classes)
    np.add.at(counts, (subj_of, class_of), 1.0)
    sizes = counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n_subj)
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]

    target = counts.sum(axis=0) / k  # (classes,)
    size_target = sizes.sum() / k
    fold_counts = np.zeros((k, n_cls))  # (k, classes)
    fold_sizes = np.zeros(k)
    fold_of = np.empty(n_subj, dtype=np.int64)
    for rank, s in enumerate(order):
        before = ((fold_counts - target) / target) ** 2  # (k, classes)
        after = ((fold_counts + counts[s] - target) / target) ** 2
        cost = (after - before).sum(axis=1)
        cost += ((fold_sizes + sizes[s] - size_target) / size_target) ** 2
        cost -= ((fold_sizes - size_target) / size_target) ** 2
        empty = np.flatnonzero(fold_sizes == 0)
        if len(empty) >= n_subj - rank:  # as many empty folds as subjects left: must fill them
            cost[np.setdiff1d(np.arange(k), empty)] = np.inf
        best = np.lexsort((np.arange(k), fold_sizes, np.round(cost, 12)))[0]
        fold_of[s] = best
        fold_counts[best] += counts[s]
        fold_sizes[best] += sizes[s]
    item_fold = fold_of[subj_of]  # (n,)
    return [np.flatnonzero(item_fold == f) for f in range(k)]


def _complement(n: int, idx: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[idx] = False
    return np.flatnonzero(mask)


def nested_from_test_folds(
    test_folds: Sequence[np.ndarray],
    subjects: Sequence,
    labels: Sequence,
    inner_k: int,
    seed: int = 0,
) -> list[OuterFold]:
    """Outer folds from given test folds (e.g. the reference's lists) + inner subject k-folds.

    The inner splits of outer fold i come from ``subject_kfold`` on its training items with seed
    ``seed + 1 + i``.
    """
    subjects = np.asarray(subjects)
    labels = np.asarray(labels)
    n = len(subjects)
    out: list[OuterFold] = []
    for i, test in enumerate(test_folds):
        test = np.unique(np.asarray(test, dtype=np.int64))
        train = _complement(n, test)
        leaked = set(subjects[test].tolist()) & set(subjects[train].tolist())
        if leaked:
            raise ValueError(f"outer fold {i}: subjects in both test and train: {sorted(leaked)}")
        n_train_subjects = len(np.unique(subjects[train]))
        if n_train_subjects < inner_k:
            raise ValueError(
                f"outer fold {i}: its training part has {n_train_subjects} subject(s), too few "
                f"for {inner_k} subject-independent inner folds (use fewer folds or more subjects)"
            )
        inner = []
        for val_local in subject_kfold(subjects[train], labels[train], inner_k, seed + 1 + i):
            val = train[val_local]
            inner.append(InnerFold(train=np.setdiff1d(train, val), val=val))
        out.append(OuterFold(test=test, train=train, inner=tuple(inner)))
    return out


def nested_splits(
    subjects: Sequence, labels: Sequence, outer_k: int, inner_k: int, seed: int = 0
) -> list[OuterFold]:
    """``outer_k`` subject-independent outer folds, each with ``inner_k`` inner train/val splits
    of its training part (subject-disjoint from each other and from the outer test fold)."""
    tests = subject_kfold(subjects, labels, outer_k, seed)
    return nested_from_test_folds(tests, subjects, labels, inner_k, seed)
