"""The typed manifest of a shard folder, and its typed folds.

``manifest.json`` (written last by the preprocessing job) says what the shards hold: the branch,
the classes, the preprocessing options, counts, skipped items, provenance and the nested folds.
Readers get a :class:`Manifest`, never a dict: a mistyped or unknown key fails loudly, naming the
key and the file, and fold indices are range-checked (:meth:`Manifest.outer`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from datasets.storage import atomic_write_bytes, join, read_bytes

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """A manifest (or its folds) that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class InnerSplit:
    """One inner split of an outer training fold: ids to train on and ids to validate on."""

    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclass(frozen=True)
class OuterSplit:
    """One outer fold: ``test`` (held out), ``train`` (the rest) and inner splits of ``train``."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    inner: tuple[InnerSplit, ...]

    def inner_split(self, j: int, where: str = "") -> InnerSplit:
        """Inner split ``j``, range-checked."""
        if not 0 <= j < len(self.inner):
            raise ManifestError(
                f"{where}inner split {j} does not exist: this outer fold has "
                f"{len(self.inner)} (0..{len(self.inner) - 1})"
            )
        return self.inner[j]


@dataclass(frozen=True)
class Folds:
    """Nested folds: a list of outer folds (ids sorted), and the seed that drew them."""

    outer: tuple[OuterSplit, ...]
    seed: int | None = None

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "outer": [
                {
                    "train": list(o.train),
                    "test": list(o.test),
                    "inner": [{"train": list(s.train), "val": list(s.val)} for s in o.inner],
                }
                for o in self.outer
            ],
        }

    @classmethod
    def from_json(cls, obj: dict, where: str = "folds") -> Folds:
        _check_keys(obj, {"seed", "outer", "version"}, where)
        outer = []
        for i, o in enumerate(obj["outer"]):
            _check_keys(o, {"train", "test", "inner"}, f"{where}: outer[{i}]")
            inner = []
            for j, s in enumerate(o["inner"]):
                _check_keys(s, {"train", "val"}, f"{where}: outer[{i}].inner[{j}]")
                inner.append(InnerSplit(tuple(s["train"]), tuple(s["val"])))
            outer.append(OuterSplit(tuple(o["train"]), tuple(o["test"]), tuple(inner)))
        return cls(tuple(outer), obj.get("seed"))


@dataclass(frozen=True)
class Counts:
    """How many items were read, written, skipped; per class; distinct subjects."""

    read: int
    written: int
    skipped: int
    centre_cropped: int
    per_class: dict[str, int]
    subjects: int


@dataclass(frozen=True)
class Manifest:
    """What a shard folder holds. ``kind`` is the branch name; ``options`` its preprocessing."""

    kind: str
    classes: tuple[str, ...]
    options: dict
    counts: Counts
    folds: Folds | None
    source: str = ""
    layout: str = ""
    num_joints: int | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    centre_cropped: tuple[str, ...] = ()
    git_commit: str = "unknown"
    schema_version: int = SCHEMA_VERSION
    path: str = field(default="", compare=False)  # where it was read from (for messages)

    def outer(self, i: int) -> OuterSplit:
        """Outer fold ``i``, range-checked (a clear error instead of an IndexError)."""
        if self.folds is None:
            raise ManifestError(f"{self.path}: these shards have no folds")
        n = len(self.folds.outer)
        if not 0 <= i < n:
            raise ManifestError(
                f"{self.path}: outer fold {i} does not exist; the folds are 0..{n - 1}"
            )
        return self.folds.outer[i]

    @property
    def n_outer(self) -> int:
        return 0 if self.folds is None else len(self.folds.outer)

    def to_json(self) -> dict:
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        body["classes"] = list(self.classes)
        body["counts"] = asdict(self.counts)
        body["folds"] = None if self.folds is None else self.folds.to_json()
        body["skipped"] = [list(s) for s in self.skipped]
        body["centre_cropped"] = list(self.centre_cropped)
        return body

    @classmethod
    def from_json(cls, obj: dict, path: str = "manifest") -> Manifest:
        known = {f.name for f in fields(cls)} - {"path"}
        _check_keys(obj, known, path)
        version = obj.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{path}: schema version {version}, this code reads {SCHEMA_VERSION}"
            )
        counts = obj["counts"]
        _check_keys(counts, {f.name for f in fields(Counts)}, f"{path}: counts")
        folds = obj.get("folds")
        return cls(
            kind=obj["kind"],
            classes=tuple(obj["classes"]),
            options=dict(obj.get("options") or {}),
            counts=Counts(**counts),
            folds=None if folds is None else Folds.from_json(folds, f"{path}: folds"),
            source=obj.get("source", ""),
            layout=obj.get("layout", ""),
            num_joints=obj.get("num_joints"),
            skipped=tuple(tuple(s) for s in obj.get("skipped", ())),
            centre_cropped=tuple(obj.get("centre_cropped", ())),
            git_commit=obj.get("git_commit", "unknown"),
            schema_version=version,
            path=path,
        )


def _check_keys(obj: dict, known: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = set(obj) - known
    if unknown:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")


def write_manifest(root: str, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically."""
    body = json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode()
    atomic_write_bytes(join(root, MANIFEST), body)


def read_manifest(root: str) -> Manifest:
    """Read and check ``manifest.json`` of a shard folder."""
    path = join(root, MANIFEST)
    try:
        obj = json.loads(read_bytes(path))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no manifest; run `python -m distributed.preprocess` first"
        ) from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from None
    return Manifest.from_json(obj, path)
