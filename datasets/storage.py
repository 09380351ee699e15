"""Paths and URIs through ``pyarrow.fs``: plain paths, ``file://`` and ``s3://`` (or any URI
pyarrow understands) work the same, so one command runs on a laptop and on a cluster.

Writes are atomic: on a local filesystem the bytes go to a temporary sibling that is renamed into
place; on object stores a single PUT is already all-or-nothing, so the object is written directly.

Object stores are configured the way pyarrow (and so Ray Data, Train and Tune) reads them: the
AWS SDK's credential chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an
instance role) and ``AWS_ENDPOINT_URL`` for S3-compatible servers. A store that cannot be reached,
a missing bucket or refused credentials raise :class:`StorageError`: one line naming the URI and
what to check.
"""

from __future__ import annotations

import os
import posixpath
import uuid

import pyarrow.fs as pafs

from datasets.records import BadInput


class StorageError(BadInput):
    """A remote path that cannot be used: the store is unreachable, the bucket does not exist,
    or the credentials are refused; the message names the URI and what to check."""


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a plain path or a URI."""
    path = str(path)
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except (OSError, ValueError) as err:  # unknown scheme, malformed URI, unreachable store
            raise StorageError(path, explain(err)) from None
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _endpoint() -> str:
    url = os.environ.get("AWS_ENDPOINT_URL")
    if url:
        return f"the endpoint AWS_ENDPOINT_URL={url}"
    if os.environ.get("AWS_ENDPOINT_URL_S3"):
        return "AWS's own endpoint (AWS_ENDPOINT_URL_S3 is set, but pyarrow reads AWS_ENDPOINT_URL)"
    return "AWS's own endpoint (set AWS_ENDPOINT_URL for an S3-compatible server)"


def _has_credentials() -> bool:
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return True
    home = os.path.expanduser("~")
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", os.path.join(home, ".aws", "credentials")),
        os.environ.get("AWS_CONFIG_FILE", os.path.join(home, ".aws", "config")),
    )
    return any(os.path.exists(f) for f in files)


def explain(err: BaseException) -> str:
    """What a pyarrow object-store error means for the user, on one line."""
    text = " ".join(str(err).split())
    low = text.lower()
    if "network_connection" in low or "could not connect" in low or "curlcode" in low:
        return (
            f"cannot reach the object store at {_endpoint()} ({text.split('Details:')[-1].strip()})"
        )
    if ("not found" in low and "bucket" in low) or "no_such_bucket" in low or "nosuchbucket" in low:
        return "the bucket does not exist (create it first, e.g. `aws s3 mb s3://BUCKET`)"
    if any(
        k in low
        for k in (
            "access_denied",
            "accessdenied",
            "forbidden",
            "invalid_access_key",
            "signature",
            "credentials",
            "expired",
        )
    ):
        creds = (
            "the credentials were refused"
            if _has_credentials()
            else "no AWS credentials were found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, ~/.aws/credentials) and none came from an instance role"
        )
        return f"access denied by the object store: {creds}"
    return text.splitlines()[0] if text else type(err).__name__


def _remote_call(path: str, fs: pafs.FileSystem, fn, *args):
    """``fn(*args)``, with a remote store's OSError turned into :class:`StorageError`."""
    if isinstance(fs, pafs.LocalFileSystem):
        return fn(*args)
    try:
        return fn(*args)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise StorageError(path, explain(err)) from None


def _info(path: str, fs: pafs.FileSystem, inner: str) -> pafs.FileInfo:
    info = _remote_call(path, fs, fs.get_file_info, inner)
    if info.type == pafs.FileType.NotFound and not isinstance(fs, pafs.LocalFileSystem):
        # S3 answers "no such key" whether or not the bucket exists: say which.
        bucket = inner.split("/", 1)[0]
        if bucket != inner and _remote_call(path, fs, fs.get_file_info, bucket).type == (
            pafs.FileType.NotFound
        ):
            raise StorageError(path, f"the bucket {bucket!r} does not exist")
    return info


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
    return _info(path, fs, inner).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    fs, inner = resolve(path)
    _remote_call(path, fs, fs.create_dir, inner, True)


def list_files(root: str) -> list[str]:
    """Files directly inside ``root`` (not recursive), as paths/URIs like ``root``."""
    fs, inner = resolve(root)
    info = _info(root, fs, inner)
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(inner, recursive=False)
    found = _remote_call(root, fs, fs.get_file_info, selector)
    names = [i.base_name for i in found if i.type == pafs.FileType.File]
    return sorted(join(root, n) for n in names)


def read_bytes(path: str) -> bytes:
    fs, inner = resolve(path)
    if _info(path, fs, inner).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: no such file")

    def read() -> bytes:
        with fs.open_input_stream(inner) as f:
            return f.read()

    return _remote_call(path, fs, read)


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

    def write() -> None:
        fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(inner) as f:
            f.write(data)

    _remote_call(path, fs, write)


def remove_stale_temporaries(root: str) -> int:
    """Delete ``.tmp-*`` files left by an interrupted run; returns how many were removed."""
    fs, inner = resolve(root)
    if _info(root, fs, inner).type == pafs.FileType.NotFound:
        return 0
    count = 0
    found = _remote_call(root, fs, fs.get_file_info, pafs.FileSelector(inner, recursive=False))
    for info in found:
        if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-"):
            fs.delete_file(info.path)
            count += 1
    return count


def ensure_writable_dir(path: str, what: str = "output folder") -> None:
    """Create ``path`` as a folder and check that a file can be written in it; ``BadInput``
    (naming the path and the problem) otherwise, before any work is done."""
    fs, inner = resolve(path)
    try:
        info = _info(path, fs, inner)
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
        if not isinstance(fs, pafs.LocalFileSystem):
            raise StorageError(path, f"cannot write the {what} there: {explain(err)}") from None
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
        raise BadInput(path, f"cannot write the {what} there ({reason})") from None
