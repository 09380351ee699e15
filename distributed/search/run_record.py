"""What a search run depends on, and which driver runs it: checked before ``tune --resume``.

``STORAGE/NAME/search.json`` is written when a search starts, before Ray does: the shards (a
digest of their manifest without its default-protocol field, their row count and the folder they
were read from), the protocol (its name and a digest of its outer folds), the base config, the
search space and the seed. ``--resume`` compares it with what the command line gives now and
refuses any difference in one line naming each, so that a resumed run never mixes two data sets,
folds or searches in one report; ``--resume`` of a run with no such file is refused too.

``STORAGE/NAME/driver.lock`` names the host and process of the driver running the search; a
second driver on the same run is refused, naming the holder. The lock is removed when the driver
ends, by an error too; a driver killed outright (SIGKILL, a lost machine) leaves it behind, and
the next driver on the same host takes it over once that process is gone. Both files are written
atomically through ``datasets.storage`` (so on ``s3://`` too). No Ray here.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

from datasets import storage
from distributed.core import console
from distributed.core.commands import UsageError

SEARCH_FILE = "search.json"
LOCK_FILE = "driver.lock"
SEARCH_SCHEMA = 1


def _plain(value):
    """A JSON-able copy (numpy scalars to Python numbers, tuples to lists)."""
    text = json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    return json.loads(text)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(_plain(obj), sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(*, manifest, shards: str, protocol_key: str, protocol, base, space) -> dict:
    """Everything a search's trials and results depend on (see the module docstring)."""
    body = {k: v for k, v in manifest.to_json().items() if k != "protocol"}
    folds = [
        [sorted(f.train), sorted(f.test), [[sorted(s.train), sorted(s.val)] for s in f.inner]]
        for f in protocol.outer
    ]
    return {
        "shards": {"digest": _digest(body), "rows": manifest.counts.written, "path": shards},
        "protocol": {"name": protocol_key, "folds": _digest(folds)},
        "config": _plain(base.flat()),
        "space": _plain({"space": space.space, "start": space.start, "fixed": space.fixed}),
        "seed": base.seed,
    }


def differences(stored: dict, now: dict) -> list[str]:
    """Each input that differs between a stored fingerprint and this one, as ``what: A when the
    run started, B now``."""
    out = []
    was, new = stored.get("shards", {}), now.get("shards", {})
    if (was.get("digest"), was.get("rows")) != (new.get("digest"), new.get("rows")):
        out.append(
            f"shards: {was.get('path')} ({was.get('rows')} rows) when the run started, "
            f"{new.get('path')} ({new.get('rows')} rows) now (their manifests differ)"
        )
    was, new = stored.get("protocol", {}), now.get("protocol", {})
    if was.get("name") != new.get("name"):
        out.append(f"protocol: {was.get('name')} when the run started, {new.get('name')} now")
    elif was.get("folds") != new.get("folds"):
        out.append(f"protocol {new.get('name')}: other folds than when the run started")
    if stored.get("repeats", 1) != now.get("repeats", 1):
        out.append(
            f"--repeats: {stored.get('repeats', 1)} when the run started, "
            f"{now.get('repeats', 1)} now"
        )
    if stored.get("seed") != now.get("seed"):
        out.append(f"--seed: {stored.get('seed')} when the run started, {now.get('seed')} now")
    old, cfg = stored.get("config", {}), now.get("config", {})
    for key in sorted((set(old) | set(cfg)) - {"seed"}):
        if old.get(key) != cfg.get(key):
            out.append(f"{key}: {old.get(key)!r} when the run started, {cfg.get(key)!r} now")
    if json.dumps(stored.get("space"), sort_keys=True) != json.dumps(
        now.get("space"), sort_keys=True
    ):
        out.append("search space: another one than when the run started (--space, --smoke)")
    return out


def _read_json(path: str, what: str) -> dict:
    try:
        doc = json.loads(storage.read_bytes(path))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return doc
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not a readable {what} ({err}); pass a new --name") from None


def require_run(root: str) -> None:
    """``--resume``: ``root`` must hold a search this version can check; one-line error if not."""
    if storage.exists(storage.join(root, SEARCH_FILE)):
        return
    if storage.exists(storage.join(root, "ledger-outer0.json")) or storage.exists(
        storage.join(root, "outer0")
    ):
        raise UsageError(
            f"{root} holds a search but no {SEARCH_FILE} (written by an older version): "
            "what it was searched with is unknown; start it again with a new --name"
        )
    raise UsageError(f"--resume: there is no run {root} to resume; leave out --resume to start it")


def check(root: str, now: dict, resume: bool) -> None:
    """On ``resume``, refuse any difference from the stored fingerprint; then (re)write it."""
    path = storage.join(root, SEARCH_FILE)
    if resume:
        require_run(root)
        stored = _read_json(path, "search record")
        if stored.get("schema") != SEARCH_SCHEMA:
            raise UsageError(
                f"{path}: schema {stored.get('schema')!r}, this code reads {SEARCH_SCHEMA}; "
                "pass a new --name"
            )
        diffs = differences(stored.get("fingerprint") or {}, now)
        if diffs:
            raise UsageError(
                f"{root} was searched with other inputs: {'; '.join(diffs)}; resume it with "
                "the same options, or start a new --name"
            )
    body = {"schema": SEARCH_SCHEMA, "fingerprint": now}
    storage.atomic_write_bytes(path, json.dumps(body, indent=1).encode())


# ------------------------------------------------------------------ the driver lock
@dataclass(frozen=True)
class Lock:
    """A held driver lock: its file and the token that says it is this driver's."""

    path: str
    token: str


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, killed but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _holder(doc: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc.get("started", 0)))
    return f"host {doc.get('host')}, pid {doc.get('pid')}, since {since}"


def acquire(root: str) -> Lock:
    """Take the run's driver lock: a live holder (or one on another host, which cannot be
    checked) is refused in one line naming it; a holder on this host whose process is gone is
    taken over, with a console line."""
    path = storage.join(root, LOCK_FILE)
    host = socket.gethostname()
    if storage.exists(path):
        try:
            doc = json.loads(storage.read_bytes(path))
            held = (doc["host"], int(doc["pid"]))
        except (ValueError, KeyError, TypeError, FileNotFoundError):
            doc, held = {}, None  # torn or vanished: nobody can be holding it
        if held and (held[0] != host or pid_alive(held[1])):
            raise UsageError(
                f"{root} is being searched by another driver ({_holder(doc)}); wait for it to "
                f"end, or, if it is gone, delete {path}"
            )
        if held:
            console.emit(f"lock: taking over {path} from a driver that is gone ({_holder(doc)})")
    token = uuid.uuid4().hex
    body = {"host": host, "pid": os.getpid(), "started": time.time(), "token": token}
    storage.atomic_write_bytes(path, json.dumps(body).encode())
    mine = json.loads(storage.read_bytes(path))
    if mine.get("token") != token:  # another driver wrote it at the same moment
        raise UsageError(f"{root} is being searched by another driver ({_holder(mine)})")
    return Lock(path, token)


def release(lock: Lock) -> None:
    """Remove the lock if it is still this driver's."""
    try:
        if json.loads(storage.read_bytes(lock.path)).get("token") != lock.token:
            return
        fs, inner = storage.resolve(lock.path)
        fs.delete_file(inner)
    except (OSError, ValueError):
        pass  # already gone, or unreadable: nothing of ours to remove
