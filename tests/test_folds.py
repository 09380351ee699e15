"""Subject-independent folds and nested splits (reference lists: test_reference_lists.py)."""

import numpy as np
import pytest

from datasets.folds import (
    OuterFold,
    nested_from_test_folds,
    nested_splits,
    subject_kfold,
)

pytestmark = pytest.mark.timeout(60)


def _dataset(n_subjects=40, n_classes=5, seed=0):
    """Subjects with 1..7 items each; labels skewed so stratification has work to do."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat([f"S{i:03d}" for i in range(n_subjects)], rng.integers(1, 8, n_subjects))
    labels = rng.choice(
        n_classes, size=len(subjects), p=np.linspace(1, 3, n_classes) / (2 * n_classes)
    )
    return subjects, np.array([f"c{x}" for x in labels])


def _check_partition(folds, subjects, n):
    allidx = np.concatenate(folds)
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))  # each item in exactly one fold
    for f in folds:
        assert len(f) > 0 and np.all(np.diff(f) > 0)
    owner = {}
    for k, f in enumerate(folds):
        for s in set(subjects[f].tolist()):
            assert owner.setdefault(s, k) == k, f"subject {s} in folds {owner[s]} and {k}"


def _worst_class_deviation(folds, labels):
    classes = np.unique(labels)
    overall = np.array([(labels == c).mean() for c in classes])
    return max(np.abs(np.array([(labels[f] == c).mean() for c in classes]) - overall).max()
               for f in folds)  # fmt: skip


def test_subject_kfold_partitions_by_subject_and_is_deterministic():
    subjects, labels = _dataset()
    folds = subject_kfold(subjects, labels, 5, seed=3)
    _check_partition(folds, subjects, len(subjects))
    again = subject_kfold(list(subjects), list(labels), 5, seed=3)
    for a, b in zip(folds, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_subject_kfold_stratifies_better_than_random_subject_splits():
    subjects, labels = _dataset(seed=1)
    greedy = _worst_class_deviation(subject_kfold(subjects, labels, 5, seed=0), labels)
    names = np.unique(subjects)
    random_devs = []
    for seed in range(20):
        perm = np.random.default_rng(seed).permutation(len(names))
        fold_of = {names[p]: i % 5 for i, p in enumerate(perm)}
        folds = [np.flatnonzero([fold_of[s] == k for s in subjects]) for k in range(5)]
        random_devs.append(_worst_class_deviation(folds, labels))
    print(f"worst class-share deviation: greedy {greedy:.3f}, random median "
          f"{np.median(random_devs):.3f}")  # fmt: skip
    assert greedy < 0.08
    assert greedy < np.min(random_devs)
    sizes = [len(f) for f in subject_kfold(subjects, labels, 5, seed=0)]
    assert max(sizes) - min(sizes) <= 0.25 * len(subjects) / 5


def test_subject_kfold_fills_every_fold_and_rejects_too_few_subjects():
    subjects = np.array(["a"] * 30 + ["b", "c", "d"])  # one huge subject, three tiny ones
    labels = np.array([0, 1] * 15 + [0, 1, 0])
    folds = subject_kfold(subjects, labels, 4, seed=0)
    _check_partition(folds, subjects, len(subjects))
    with pytest.raises(ValueError, match="4 distinct subjects cannot fill 5"):
        subject_kfold(subjects, labels, 5, seed=0)
    with pytest.raises(ValueError, match="k must be >= 2"):
        subject_kfold(subjects, labels, 1)


def test_nested_splits_never_leak_subjects():
    subjects, labels = _dataset(n_subjects=30)
    n = len(subjects)
    nested = nested_splits(subjects, labels, outer_k=5, inner_k=3, seed=7)
    _check_partition([f.test for f in nested], subjects, n)
    for f in nested:
        assert isinstance(f, OuterFold) and len(f.inner) == 3
        np.testing.assert_array_equal(np.sort(np.r_[f.train, f.test]), np.arange(n))
        assert not set(subjects[f.train]) & set(subjects[f.test])
        vals = np.concatenate([s.val for s in f.inner])
        np.testing.assert_array_equal(np.sort(vals), f.train)  # inner vals partition outer train
        for s in f.inner:
            np.testing.assert_array_equal(np.sort(np.r_[s.train, s.val]), f.train)
            assert not set(subjects[s.train]) & set(subjects[s.val])
            assert not set(subjects[s.val]) & set(subjects[f.test])
            assert not set(s.train.tolist()) & set(f.test.tolist())
    again = nested_splits(subjects, labels, 5, 3, seed=7)
    for a, b in zip(nested, again, strict=True):
        np.testing.assert_array_equal(a.inner[1].val, b.inner[1].val)


def test_nested_splits_rejects_too_few_training_subjects():
    subjects = np.repeat(["s01", "s02", "s03"], 4)  # 2 outer folds: one trains on 1 subject
    with pytest.raises(ValueError, match="training part has 1 subject"):
        nested_splits(subjects, np.tile([0, 1, 2, 3], 3), outer_k=2, inner_k=2)
    assert len(nested_splits(np.repeat(["a", "b", "c", "d"], 4), np.tile([0, 1], 8), 2, 2)) == 2


def test_nested_from_test_folds_rejects_leaking_test_folds():
    subjects = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    labels = np.zeros(8, int)
    with pytest.raises(ValueError, match="subjects in both"):
        nested_from_test_folds([np.array([0, 2, 3])], subjects, labels, inner_k=2)
