"""The typed manifest of a shard folder, and the evaluation protocols stored beside it.

``manifest.json`` (written last by the preprocessing job) says what the shards hold: the branch,
the classes, the preprocessing options, counts, skipped items, provenance, and the name of the
default protocol. Protocols (outer train/test folds with inner train/val splits, as item ids;
``datasets.protocols.Protocol``) live in ``protocols/<key>.json`` next to it, several side by
side; ``python -m distributed.folds`` (re)writes them without touching the Parquet files.
Readers get typed objects, never dicts: a mistyped or unknown key fails loudly, naming the key
and the file.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field, fields

from datasets.protocols import Protocol, ProtocolError
from datasets.storage import atomic_write_bytes, exists, join, list_files, read_bytes

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
PROTOCOLS = "protocols"


class ManifestError(ValueError):
    """A manifest (or its folds) that cannot be used; the message names the file and the key."""


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
    protocol: str | None = None  # key of the default protocol (None: the data could not fill one)
    source: str = ""
    layout: str = ""
    num_joints: int | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    centre_cropped: tuple[str, ...] = ()
    notes: tuple[tuple[str, str], ...] = ()  # (path, note): kept items worth a word
    git_commit: str = "unknown"
    schema_version: int = SCHEMA_VERSION
    path: str = field(default="", compare=False)  # where it was read from (for messages)

    def to_json(self) -> dict:
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        body["classes"] = list(self.classes)
        body["counts"] = asdict(self.counts)
        body["skipped"] = [list(s) for s in self.skipped]
        body["centre_cropped"] = list(self.centre_cropped)
        body["notes"] = [list(n) for n in self.notes]
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
        return cls(
            kind=obj["kind"],
            classes=tuple(obj["classes"]),
            options=dict(obj.get("options") or {}),
            counts=Counts(**counts),
            protocol=obj.get("protocol"),
            source=obj.get("source", ""),
            layout=obj.get("layout", ""),
            num_joints=obj.get("num_joints"),
            skipped=tuple(tuple(s) for s in obj.get("skipped", ())),
            centre_cropped=tuple(obj.get("centre_cropped", ())),
            notes=tuple(tuple(n) for n in obj.get("notes", ())),
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


KEY_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def check_key(key: str) -> str:
    """A protocol key is a file-name-safe word (``subjects``, ``lists``, ``dfew``, ...)."""
    if not key or set(key) - KEY_CHARS:
        raise ManifestError(f"protocol name {key!r}: use lower-case letters, digits, - and _")
    return key


def protocol_path(root: str, key: str) -> str:
    return join(root, PROTOCOLS, f"{check_key(key)}.json")


def write_protocol(root: str, key: str, protocol: Protocol) -> str:
    """Store ``protocol`` under ``key`` in the shard folder (atomically); returns its path."""
    path = protocol_path(root, key)
    atomic_write_bytes(path, json.dumps(protocol.to_json(), indent=1).encode())
    return path


def list_protocols(root: str) -> list[str]:
    """Keys of the protocols stored in a shard folder."""
    names = [posixpath.basename(p) for p in list_files(join(root, PROTOCOLS))]
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and ".tmp-" not in n)


def default_to_keep(root: str, key: str) -> str | None:
    """The default protocol a re-run keeps while it rewrites the manifest: the stored manifest's,
    else ``key`` (the layout's own protocol), when its file is there; a re-run whose folds fail
    must not leave the stored protocols without a default."""
    stored = list_protocols(root)
    try:
        old = read_manifest(root).protocol
    except (FileNotFoundError, ManifestError):
        old = None
    return old if old in stored else key if key in stored else None


def no_protocol_hint(root: str, layout: str = "") -> str:
    """How to write folds for shards that have none (only protocols their layout can fill)."""
    from datasets.layouts import RELEASES  # a release's own split; its clips name no subject

    if layout in RELEASES:
        how = f"--protocol {layout} --inner-folds J`"
    else:
        how = (
            "--protocol subjects --folds K --inner-folds J` (or --protocol lists --fold-lists DIR)"
        )
    return f"{root} has no folds yet; write them with `python -m distributed.folds {root} {how}"


def read_protocol(root: str, manifest: Manifest, key: str | None = None) -> tuple[str, Protocol]:
    """(key, protocol): ``key``, or the manifest's default protocol. A clear error when the
    shards have none or the key is unknown (listing the ones there are)."""
    key = key or manifest.protocol
    if key is None:
        there = list_protocols(root)
        if not there:
            raise ManifestError(no_protocol_hint(root, manifest.layout))
        raise ManifestError(
            f"{root}: no default protocol; choose one with --protocol ({', '.join(there)})"
        )
    path = protocol_path(root, key)
    if not exists(path):
        there = list_protocols(root)
        if not there:
            hint = no_protocol_hint(root, manifest.layout)
            raise ManifestError(f"{root}: no protocol {key!r}; {hint}")
        raise ManifestError(
            f"{root}: no protocol {key!r}; stored: {', '.join(there)} (write it with "
            f"`python -m distributed.folds {root} --protocol {key}`)"
        )
    try:
        return key, Protocol.from_json(json.loads(read_bytes(path)))
    except (json.JSONDecodeError, ProtocolError) as err:
        raise ManifestError(f"{path}: {err}") from None
