"""Protocol builders: one typed result, exact JSON round trip, strict validation, inner splits
drawn inside the outer training sets only, and one-line refusals."""

import json
import time

import numpy as np
import pytest

from datasets import protocols
from datasets.protocols import InnerSplit, OuterSplit, Protocol, ProtocolError
from datasets.records import SourceItem

pytestmark = pytest.mark.timeout(120)


def _dataset(n_subjects=30, n_classes=4, seed=0):
    """Subjects with 1..7 items each, skewed labels; ids "S007/003"."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 8, n_subjects)
    subjects = [f"S{s:03d}" for s, c in enumerate(counts) for _ in range(c)]
    ids = [f"S{s:03d}/{j:03d}" for s, c in enumerate(counts) for j in range(c)]
    labels = [f"c{x}" for x in rng.choice(n_classes, len(ids), p=np.linspace(1, 2, n_classes) /
                                          np.linspace(1, 2, n_classes).sum())]  # fmt: skip
    return ids, subjects, labels


def test_subjects_matches_the_preprocess_folds():
    """The folds preprocessing has always drawn: datasets.folds.nested_splits, as id lists."""
    from datasets.folds import nested_splits

    ids, subjects, labels = _dataset()
    protocol = protocols.subjects(ids, subjects, labels, folds=5, inner_folds=3, seed=4)
    assert protocol.name == "subject-independent 5x3-fold"
    names = np.asarray(ids)
    expected = [
        {"train": sorted(names[f.train].tolist()), "test": sorted(names[f.test].tolist()),
         "inner": [{"train": sorted(names[i.train].tolist()), "val": sorted(names[i.val].tolist())}
                   for i in f.inner]}
        for f in nested_splits(subjects, labels, 5, 3, 4)
    ]  # fmt: skip
    assert protocol.to_json()["outer"] == expected
    protocol.validate(ids, dict(zip(ids, subjects, strict=True)))


def test_json_round_trip_is_exact():
    ids, subjects, labels = _dataset(n_subjects=12)
    protocol = protocols.subjects(ids, subjects, labels, folds=3, inner_folds=2, seed=0)
    doc = json.loads(json.dumps(protocol.to_json()))
    assert list(doc) == ["name", "description", "outer"]
    assert list(doc["outer"][0]) == ["train", "test", "inner"]
    assert list(doc["outer"][0]["inner"][0]) == ["train", "val"]
    assert doc["outer"][1]["test"] == sorted(doc["outer"][1]["test"])
    back = Protocol.from_json(doc)
    assert back == protocol and isinstance(back.outer[0].inner[0], InnerSplit)


def test_ids_are_sorted_on_construction():
    split = OuterSplit(["b", "a"], ["d", "c"], [InnerSplit(["b"], ["a"])])
    assert split.train == ("a", "b") and split.test == ("c", "d") and split.inner[0].val == ("a",)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"name": "x", "description": ""}, "document has no 'outer'"),
        ({"name": "x", "description": "", "outer": {}}, "'outer' is not a list"),
        ({"name": "x", "description": "", "outer": [{"train": [], "test": []}]}, "no 'inner'"),
        ({"name": "x", "description": "", "outer": [{"train": [1], "test": [], "inner": []}]},
         r"outer\[0\].train is not a list of id strings"),
        ({"description": "", "outer": []}, "document has no 'name'"),
    ],
)  # fmt: skip
def test_from_json_refuses_malformed_documents(doc, message):
    with pytest.raises(ProtocolError, match=message):
        Protocol.from_json(doc)


def _tiny():
    ids = ["a", "b", "c", "d", "e", "f"]
    outer = (
        OuterSplit(["c", "d", "e", "f"], ["a", "b"], [InnerSplit(["e", "f"], ["c", "d"])]),
        OuterSplit(["a", "b", "e", "f"], ["c", "d"], [InnerSplit(["a", "b"], ["e", "f"])]),
    )
    return ids, Protocol("tiny", "", outer)


@pytest.mark.parametrize(
    "outer, message",
    [
        ((OuterSplit("cdef", "abc", []),), r"outer fold 0: 1 id\(s\) in both train and test"),
        ((OuterSplit("cdef", "abz", []),), r"test has 1 unknown id\(s\): \['z'\]"),
        ((OuterSplit("cde", "ab", []),), r"1 id\(s\) in neither part: \['f'\]"),
        ((OuterSplit("cdef", "ab", []), OuterSplit("cdef", "ab", [])),
         "outer fold 1: 'a' is also tested in outer fold 0"),
        ((OuterSplit("cdef", "ab", [InnerSplit("cd", "e")]),),
         "inner split 0: train \\+ val do not cover the outer train"),
        ((OuterSplit("cdef", "ab", [InnerSplit("cdef", "f")]),),
         r"inner split 0: 1 id\(s\) in both train and val"),
        ((OuterSplit("cdef", "ab", [InnerSplit("cde", "fa")]),), r"val has 1 unknown id\(s\)"),
        ((OuterSplit(["c", "c", "d", "e", "f"], "ab", []),), "train lists an id twice"),
    ],
)  # fmt: skip
def test_validate_refuses_broken_protocols(outer, message):
    ids, good = _tiny()
    good.validate(ids)
    with pytest.raises(ProtocolError, match=message) as info:
        Protocol("tiny", "", outer).validate(ids)
    assert "\n" not in str(info.value)


def test_validate_checks_subjects_when_given():
    ids, protocol = _tiny()
    protocol.validate(ids, {x: x for x in ids})
    with pytest.raises(ProtocolError, match=r"outer fold 0: subject\(s\) on both sides: \['s'\]"):
        protocol.validate(ids, {"a": "s", "b": "t", "c": "s", "d": "u", "e": "v", "f": "w"})
    with pytest.raises(ProtocolError, match="not unique"):
        protocol.validate([*ids, "a"])


def _reference_stratified(train, label_of, k, seed):
    """From the module's text: classes in sorted order; a class's ids, sorted, are shuffled with
    one ``default_rng(seed)`` generator per outer fold and dealt to inner folds 0, 1, .., k-1, 0,
    .. by a counter that runs on across classes."""
    rng = np.random.default_rng(seed)
    vals, counter = [[] for _ in range(k)], 0
    for cls in sorted({label_of[x] for x in train}):
        members = sorted(x for x in train if label_of[x] == cls)
        for pos in rng.permutation(len(members)):
            vals[counter % k].append(members[pos])
            counter += 1
    return [tuple(sorted(v)) for v in vals]


def _items_without_subjects(n=60, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.choice(["Happy", "Sad", "Fear"], n, p=[0.5, 0.3, 0.2])
    return [SourceItem(f"{i:05d}", "", str(lab), f"/x/{i}") for i, lab in enumerate(labels)]


def test_official_stratified_inner_splits():
    items = _items_without_subjects()
    ids = [it.id for it in items]
    label_of = {it.id: it.label for it in items}
    outer = [(ids[k * 12 + 12 :] + ids[: k * 12], ids[k * 12 : k * 12 + 12]) for k in range(5)]
    p = protocols.official(outer, items, inner_folds=3, seed=7, name="DFEW 5-fold official")
    assert p.name == "DFEW 5-fold official"
    assert "class-stratified" in p.description and "seed 7" in p.description
    p.validate(ids)
    for i, (fold, (train, test)) in enumerate(zip(p.outer, outer, strict=True)):
        assert fold.train == tuple(sorted(train)) and fold.test == tuple(sorted(test))
        assert [s.val for s in fold.inner] == _reference_stratified(train, label_of, 3, 7 + 1 + i)
        sizes = [len(s.val) for s in fold.inner]
        assert max(sizes) - min(sizes) <= 1
        for cls in ("Happy", "Sad", "Fear"):
            per = [sum(label_of[x] == cls for x in s.val) for s in fold.inner]
            assert max(per) - min(per) <= 1, (cls, per)
    again = protocols.official(outer, items, inner_folds=3, seed=7, name="DFEW 5-fold official")
    assert again == p
    assert protocols.official(outer, items, inner_folds=3, seed=8).outer != p.outer


def test_official_and_lists_use_subject_disjoint_inner_splits_when_subjects_are_known():
    ids, subjects, labels = _dataset(n_subjects=20)
    items = [SourceItem(*t, "/x") for t in zip(ids, subjects, labels, strict=True)]
    ref = protocols.subjects(ids, subjects, labels, folds=4, inner_folds=2, seed=1)
    lists = [(f.train, f.test) for f in ref.outer]
    for build in (protocols.official, protocols.from_lists):
        p = build(lists, items, inner_folds=3, seed=2)
        assert "subject-disjoint" in p.description
        p.validate(ids, dict(zip(ids, subjects, strict=True)))  # includes inner subject checks
        assert [f.test for f in p.outer] == [f.test for f in ref.outer]
    assert protocols.from_lists(lists, items).name == "CK+ 10-fold, reference lists"


def test_protocol_errors_are_one_line():
    ids = [f"S{s:03d}/{j:03d}" for s in range(4) for j in range(3)]  # 4 subjects x 3 items
    subjects = [x.split("/")[0] for x in ids]
    labels = ["Happy", "Sad", "Fear"] * 4
    items = [SourceItem(*t, "/x") for t in zip(ids, subjects, labels, strict=True)]
    cases = [
        (lambda: protocols.subjects(ids, subjects, labels, folds=5),
         "cannot build 5x3 subject folds: 4 distinct subjects cannot fill 5"),
        (lambda: protocols.subjects(ids, subjects, labels, folds=2, inner_folds=3),
         "training part has 2 subject"),
        (lambda: protocols.subjects(ids, subjects[:-1], labels), "12 ids but 11 subjects"),
        (lambda: protocols.subjects(ids, subjects, labels, inner_folds=1), "inner_folds must be"),
        (lambda: protocols.official([(ids[:-3], ids[-3:])], items, inner_folds=5),
         "outer fold 0: 3 distinct subjects cannot fill 5"),
        (lambda: protocols.official([(ids[1:], ["nope"])], items),
         r"1 id\(s\) not among the items: \['nope'\]"),
        (lambda: protocols.official([(ids, ids[:1])], items), "in both train and test"),
        (lambda: protocols.official([(ids, [])], items), "empty test set"),
        (lambda: protocols.from_lists([(ids[1:], ids[:1])], items),
         r"subjects in train and test: \['S000'\]"),
    ]  # fmt: skip
    for build, message in cases:
        with pytest.raises(ProtocolError, match=message) as info:
            build()
        assert "\n" not in str(info.value)
        assert isinstance(info.value, ValueError)


def test_building_a_ckplus_sized_protocol_is_fast():
    rng = np.random.default_rng(0)
    subjects = np.sort(rng.integers(0, 118, 327))  # CK+: 327 labelled sequences, 118 subjects
    ids = [f"S{s:03d}/{i:03d}" for i, s in enumerate(subjects)]
    labels = rng.choice(["Angry", "Contempt", "Disgust", "Fear", "Happy", "Sad", "Surprise"], 327)
    t0 = time.perf_counter()
    p = protocols.subjects(ids, [f"S{s:03d}" for s in subjects], labels, folds=10, inner_folds=3)
    elapsed = time.perf_counter() - t0
    assert len(p.outer) == 10 and sum(len(f.test) for f in p.outer) == 327
    assert elapsed < 1.0, f"a CK+-sized 10x3 protocol took {elapsed:.2f} s"
