"""The shard schema: the one contract between preprocessing and training.

A shard folder holds ``shard-NNNNN.parquet`` files and a ``manifest.json`` (see
``datasets.manifest``). Each Parquet row is one video (facial) or one joint sequence (gesture).
Array payloads are stored as raw bytes in a ``large_binary`` column next to explicit shape
columns, not as Arrow tensor columns: Parquet
stores tensor columns as repeated lists, which decode 3-10x slower (measured in
``benchmarks/pipeline.py``). :func:`facial_frames` / :func:`gesture_arrays` turn a row (from
pyarrow, or from a Ray Data numpy batch) back into numpy arrays without copying.

Facial row: id, subject, label (int16, index into the manifest's ``classes``), label_name,
n_frames, size, frames (n_frames*size*size*3 uint8, C order, RGB), face_fraction, centre_cropped,
source. Gesture row: id, subject, label, label_name, n_frames, n_joints, dims, joints
(n_frames*n_joints*dims float32), confidence (n_frames*n_joints float32), layout, source.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datasets.storage import atomic_write_bytes, join, list_files, read_bytes, resolve

SCHEMA_VERSION = 1
SHARD_PATTERN = "shard-{:05d}.parquet"

FACIAL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("subject", pa.string()),
        ("label", pa.int16()),
        ("label_name", pa.string()),
        ("n_frames", pa.int32()),
        ("size", pa.int32()),
        ("frames", pa.large_binary()),
        ("face_fraction", pa.float32()),
        ("centre_cropped", pa.bool_()),
        ("source", pa.string()),
    ],
    metadata={"emovis.schema_version": str(SCHEMA_VERSION), "emovis.rows": "video"},
)

GESTURE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("subject", pa.string()),
        ("label", pa.int16()),
        ("label_name", pa.string()),
        ("n_frames", pa.int32()),
        ("n_joints", pa.int32()),
        ("dims", pa.int32()),
        ("joints", pa.large_binary()),
        ("confidence", pa.large_binary()),
        ("layout", pa.string()),
        ("source", pa.string()),
    ],
    metadata={"emovis.schema_version": str(SCHEMA_VERSION), "emovis.rows": "joint-sequence"},
)


@dataclass(frozen=True)
class FacialRow:
    """One preprocessed video, ready to be written as a facial shard row."""

    id: str
    subject: str
    label: int
    label_name: str
    frames: np.ndarray  # (n, S, S, 3) uint8
    face_fraction: float
    centre_cropped: bool
    source: str


@dataclass(frozen=True)
class GestureRow:
    """One joint sequence (missing joints already filled), ready to be written as a shard row."""

    id: str
    subject: str
    label: int
    label_name: str
    joints: np.ndarray  # (T, J, D) float32
    confidence: np.ndarray  # (T, J) float32
    layout: str
    source: str


def facial_table(rows: Sequence[FacialRow]) -> pa.Table:
    """Arrow table of facial rows (schema :data:`FACIAL_SCHEMA`)."""
    for r in rows:
        f = r.frames
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[1] != f.shape[2] or f.shape[3] != 3:
            raise ValueError(f"{r.id}: frames must be (n, S, S, 3) uint8, got {f.dtype} {f.shape}")
    cols = {
        "id": [r.id for r in rows],
        "subject": [r.subject for r in rows],
        "label": [r.label for r in rows],
        "label_name": [r.label_name for r in rows],
        "n_frames": [r.frames.shape[0] for r in rows],
        "size": [r.frames.shape[1] for r in rows],
        "frames": [np.ascontiguousarray(r.frames).tobytes() for r in rows],
        "face_fraction": [float(r.face_fraction) for r in rows],
        "centre_cropped": [bool(r.centre_cropped) for r in rows],
        "source": [r.source for r in rows],
    }
    return pa.Table.from_pydict(cols, schema=FACIAL_SCHEMA)


def gesture_table(rows: Sequence[GestureRow]) -> pa.Table:
    """Arrow table of gesture rows (schema :data:`GESTURE_SCHEMA`)."""
    for r in rows:
        if r.joints.ndim != 3 or r.confidence.shape != r.joints.shape[:2]:
            raise ValueError(f"{r.id}: joints {r.joints.shape} / confidence {r.confidence.shape}")
    cols = {
        "id": [r.id for r in rows],
        "subject": [r.subject for r in rows],
        "label": [r.label for r in rows],
        "label_name": [r.label_name for r in rows],
        "n_frames": [r.joints.shape[0] for r in rows],
        "n_joints": [r.joints.shape[1] for r in rows],
        "dims": [r.joints.shape[2] for r in rows],
        "joints": [np.ascontiguousarray(r.joints, np.float32).tobytes() for r in rows],
        "confidence": [np.ascontiguousarray(r.confidence, np.float32).tobytes() for r in rows],
        "layout": [r.layout for r in rows],
        "source": [r.source for r in rows],
    }
    return pa.Table.from_pydict(cols, schema=GESTURE_SCHEMA)


def facial_frames(frames: bytes, n_frames: int, size: int) -> np.ndarray:
    """Decode a row's ``frames`` payload into a read-only (n, S, S, 3) uint8 view."""
    return np.frombuffer(frames, dtype=np.uint8).reshape(int(n_frames), int(size), int(size), 3)


def gesture_arrays(
    joints: bytes, confidence: bytes, n_frames: int, n_joints: int, dims: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a row's joint payloads into (T, J, D) and (T, J) float32 views."""
    t, j = int(n_frames), int(n_joints)
    return (
        np.frombuffer(joints, dtype=np.float32).reshape(t, j, int(dims)),
        np.frombuffer(confidence, dtype=np.float32).reshape(t, j),
    )


ROW_GROUP_BYTES = 1 << 20


def row_group_rows(table: pa.Table, target_bytes: int = ROW_GROUP_BYTES) -> int:
    """Rows per row group: about ``target_bytes`` of data, 1 to 64 rows.

    Small row groups let a fold read only the groups holding its rows (their ``id`` statistics
    say which, see :func:`fold_plan`): a video of a few MB is a group of its own, so a fold of
    1/5 of the rows reads about 1/5 of the bytes; short joint sequences share a group.
    """
    per_row = table.nbytes / max(table.num_rows, 1)
    return int(min(64, max(1, target_bytes // max(per_row, 1))))


def write_shard(table: pa.Table, path: str, compression: str = "zstd") -> None:
    """Write one Parquet shard atomically (temporary name in the same folder, then rename).

    Preprocessing plans shards in id order, so each row group's ``id`` statistics (min, max)
    cover a narrow range and a fold skips the groups that hold none of its rows."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, row_group_size=row_group_rows(table))
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def shard_path(root: str, index: int) -> str:
    return join(root, SHARD_PATTERN.format(index))


def shard_files(root: str) -> list[str]:
    """Finished shard files of a shard folder, sorted (temporary files are ignored)."""
    return sorted(
        p
        for p in list_files(root)
        if os.path.basename(p).startswith("shard-") and p.endswith(".parquet")
    )


def read_table(root: str, columns: Iterable[str] | None = None) -> pa.Table:
    """Read every shard of a folder into one Arrow table (small data, tests and tools)."""
    files = shard_files(root)
    if not files:
        raise FileNotFoundError(f"{root}: no shard-*.parquet files")
    cols = list(columns) if columns is not None else None
    return pa.concat_tables(
        pq.read_table(pa.BufferReader(read_bytes(f)), columns=cols) for f in files
    )


@dataclass(frozen=True)
class RowGroup:
    """One row group of a shard file, from the file's footer."""

    file: str
    index: int
    num_rows: int
    nbytes: int  # compressed bytes of the columns read
    min_id: str | None  # None: no statistics (the group is always read)
    max_id: str | None


def row_groups(path: str, columns: Iterable[str] | None = None) -> list[RowGroup]:
    """The row groups of one shard file with their ``id`` range (reads the footer only)."""
    fs, inner = resolve(path)
    with fs.open_input_file(inner) as f:
        meta = pq.ParquetFile(f).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    want = set(columns) if columns is not None else set(names)
    out = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        nbytes = sum(rg.column(i).total_compressed_size for i, n in enumerate(names) if n in want)
        stats = rg.column(names.index("id")).statistics
        lo = hi = None
        if stats is not None and stats.has_min_max:
            lo, hi = str(stats.min), str(stats.max)
        out.append(RowGroup(path, g, rg.num_rows, nbytes, lo, hi))
    return out


@dataclass(frozen=True)
class FoldPart:
    """Row groups of one file that hold rows of a fold, and how many of the fold's rows."""

    file: str
    groups: tuple[int, ...]
    nbytes: int
    group_rows: int  # rows in those groups (read)
    rows: int  # of them, rows of the fold (kept)


def shard_row_groups(root: str, columns: Iterable[str]) -> list[RowGroup]:
    """Every row group of a shard folder (one footer read per file)."""
    return [g for f in shard_files(root) for g in row_groups(f, columns)]


def fold_plan(
    groups: Sequence[RowGroup], ids: Iterable[str], row_ids: dict | None = None
) -> list[FoldPart]:
    """Which row groups a fold must read: those whose ``id`` range holds one of ``ids``.

    ``row_ids`` (file -> ids of its rows in order, optional) makes the counts of kept rows exact;
    without it ``rows`` counts the fold's ids that fall in each group's range.
    """
    import bisect

    wanted = sorted(set(ids))
    parts: dict[str, list] = {}
    for g in groups:
        if g.min_id is None:
            n = len(wanted)
        else:
            n = bisect.bisect_right(wanted, g.max_id) - bisect.bisect_left(wanted, g.min_id)
        if n:
            parts.setdefault(g.file, []).append((g, n))
    out = []
    for file, chosen in parts.items():
        out.append(
            FoldPart(
                file,
                tuple(g.index for g, _ in chosen),
                sum(g.nbytes for g, _ in chosen),
                sum(g.num_rows for g, _ in chosen),
                sum(n for _, n in chosen),
            )
        )
    return out


def read_fold_part(
    part: FoldPart, columns: Sequence[str], ids: Iterable[str], source=None
) -> pa.Table:
    """The rows of ``ids`` in the planned row groups of one file (only those groups are read).

    ``ids`` may be a ready ``pa.Array`` of strings (a reader of many parts builds it once).
    ``source`` is an open file to read from instead of ``part.file`` (a test counts its bytes)."""
    import pyarrow.compute as pc

    cols = list(columns) if "id" in columns else ["id", *columns]
    if source is None:
        fs, inner = resolve(part.file)
        with fs.open_input_file(inner) as f:
            table = pq.ParquetFile(f).read_row_groups(list(part.groups), columns=cols)
    else:
        table = pq.ParquetFile(source).read_row_groups(list(part.groups), columns=cols)
    value_set = ids if isinstance(ids, pa.Array) else pa.array(sorted(set(ids)), pa.string())
    keep = pc.is_in(table["id"], value_set=value_set)
    if pc.all(keep).as_py():  # every row is the fold's: no filtered copy of the payloads
        return table.select(list(columns))
    return table.filter(keep).select(list(columns))
