"""Shard files: the one contract between preprocessing and training, whatever the branch.

A shard folder holds ``shard-NNNNN.parquet`` files and a ``manifest.json`` (see
``datasets.manifest``). Each Parquet row is one item of a branch; its schema, row type and
payload readers live with the branch (``branches/<branch>/data.py``). Array payloads are stored
as raw bytes in a ``large_binary`` column next to explicit shape columns, not as Arrow tensor
columns: Parquet stores tensor columns as repeated lists, which decode 3-10x slower (measured in
``benchmarks/pipeline.py``). This module writes and lists shard files, reads tables and plans
the row groups a fold's readers take.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from datasets.storage import atomic_write_bytes, join, list_files, read_bytes, resolve

SCHEMA_VERSION = 1
SHARD_PATTERN = "shard-{:05d}.parquet"

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
