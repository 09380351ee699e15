"""Paths and URIs through ``pyarrow.fs``: plain paths, ``file://`` and ``s3://`` (or any URI
pyarrow understands) work the same, so one command runs on a laptop and on a cluster.

Writes are atomic: on a local filesystem the bytes go to a temporary sibling that is renamed into
place; on object stores a single PUT is already all-or-nothing, so the object is written directly.
"""

from __future__ import annotations

import os
import posixpath
import uuid

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a plain path or a URI."""
    path = str(path)
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(root: str, *parts: str) -> str:
    root = str(root)
    if is_uri(root):
        return posixpath.join(root, *parts)
    return os.path.join(root, *parts)


def local_path(path: str) -> str | None:
    """The local filesystem path of ``path`` (plain or ``file://``), or None for remote URIs."""
    fs, inner = resolve(path)
    return inner if isinstance(fs, pafs.LocalFileSystem) else None


def exists(path: str) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    fs, inner = resolve(path)
    fs.create_dir(inner, recursive=True)


def list_files(root: str) -> list[str]:
    """Files directly inside ``root`` (not recursive), as paths/URIs like ``root``."""
    fs, inner = resolve(root)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(inner, recursive=False)
    names = [i.base_name for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
    return sorted(join(root, n) for n in names)


def read_bytes(path: str) -> bytes:
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file."""
    fs, inner = resolve(path)
    parent = posixpath.dirname(inner) if not isinstance(fs, pafs.LocalFileSystem) else None
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(inner), exist_ok=True)
        tmp = os.path.join(
            os.path.dirname(inner), f".tmp-{uuid.uuid4().hex[:12]}-{os.path.basename(inner)}"
        )
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, inner)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def remove_stale_temporaries(root: str) -> int:
    """Delete ``.tmp-*`` files left by an interrupted run; returns how many were removed."""
    fs, inner = resolve(root)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return 0
    count = 0
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=False)):
        if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-"):
            fs.delete_file(info.path)
            count += 1
    return count


def ensure_writable_dir(path: str, what: str = "output folder") -> None:
    """Create ``path`` as a folder and check that a file can be written in it; ``BadInput``
    (naming the path and the problem) otherwise, before any work is done."""
    from datasets.records import BadInput

    fs, inner = resolve(path)
    try:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.File:
            raise BadInput(path, f"the {what} is a file, not a folder")
        fs.create_dir(inner, recursive=True)
        probe = posixpath.join(inner, f".tmp-probe-{uuid.uuid4().hex[:8]}")
        with fs.open_output_stream(probe) as f:
            f.write(b"")
        fs.delete_file(probe)
    except BadInput:
        raise
    except (OSError, ValueError) as err:  # pyarrow raises OSError subclasses; ArrowInvalid is
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
        raise BadInput(path, f"cannot write the {what} there ({reason})") from None
