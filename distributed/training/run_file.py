"""The run file of a training run: what its checkpoints depend on, checked before a re-run.

A fit that keeps its checkpoints on storage (``train``, a search's final retrain, fusion) writes
``STORAGE/NAME/run.json`` before its first epoch: the training configuration, its folds (protocol,
outer fold, inner split and a digest of their row ids), the shards' manifest (a digest, and the
folder it was read from) and the host that keeps the checkpoints: this process
(``distributed.training.local_hosts``, ``checkpoint_NNNNNN`` folders) or a Ray Train worker group
(Ray
Train's own run storage, ``checkpoint_manager_snapshot.json``). Re-running the same
``STORAGE/NAME`` with the same inputs continues from the newest checkpoint; with any other input
it is refused, naming each difference, before Ray starts. A run with no checkpoint yet takes the
new inputs. The loop keeps the same identity in every checkpoint state and checks it on restore.

No Ray here.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs

from datasets import storage
from distributed.core.commands import UsageError

RUN_FILE = "run.json"
RUN_SCHEMA = 1
RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run
HOSTS = {
    "local": "this process (--local)",
    "worker group": "a Ray Train worker group",
}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def fold_identity(spec) -> dict:
    """What a fold of a fit is (a ``trainer.FoldSpec``): where its rows come from, and which."""
    return {
        **spec.trained_on.to_json(),
        "rows": _digest([sorted(spec.train), sorted(spec.val) if spec.val else None]),
    }


def identity(cfg, folds: list[dict], manifest) -> dict:
    """Everything a fit's checkpoints depend on: the flat training config, the folds
    (:func:`fold_identity` of each) and the shards' manifest (which default protocol it names
    does not matter: the folds say which rows)."""
    shards = {k: v for k, v in manifest.to_json().items() if k != "protocol"}
    return {"config": cfg.flat(), "folds": list(folds), "shards": _digest(shards)}


def _fold_text(fold: dict) -> str:
    inner = "" if fold.get("inner") is None else f" inner {fold['inner']}"
    return f"fold {fold.get('outer')}{inner}"


def differences(stored: dict, now: dict, shards: tuple[str, str] = ("", "")) -> list[str]:
    """Each input that differs between a stored identity and this one, as ``key: A in the
    checkpoint, B now`` (``shards``: the two shard folders, to name them)."""
    out = []
    old, new = stored.get("config", {}), now.get("config", {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
    a, b = stored.get("folds", []), now.get("folds", [])
    where = [{k: v for k, v in f.items() if k != "rows"} for f in a]
    if where != [{k: v for k, v in f.items() if k != "rows"} for f in b]:
        out.append(
            f"folds: {', '.join(map(_fold_text, a))} in the checkpoint, "
            f"{', '.join(map(_fold_text, b))} now"
        )
    elif a != b:
        changed = [_fold_text(f) for f, g in zip(a, b) if f != g]
        out.append(f"rows of {', '.join(changed)}: other ids in the checkpoint than now")
    if stored.get("shards") != now.get("shards"):
        was, now_ = shards
        named = f" ({was} in the checkpoint, {now_} now)" if was or now_ else ""
        out.append(f"shards: other data, their manifests differ{named}")
    return out


@dataclass(frozen=True)
class Resume:
    """Where a re-run continues: the newest checkpoint (``path`` on ``filesystem``), the last
    epoch and fold in it, and whether that was the run's last epoch."""

    path: str
    filesystem: object
    fold: int
    epoch: int
    finished: bool
    where: str  # the fold as a person names it: "fold 0 inner 1"

    def history(self) -> list[dict]:
        """Every epoch's metrics up to this checkpoint."""
        return history_of(self.filesystem, self.path)


def history_of(fs, path: str) -> list[dict]:
    from distributed.training.loop import HISTORY_FILE

    with fs.open_input_file(posixpath.join(path, HISTORY_FILE)) as f:
        return json.load(f)


def newest_checkpoint(run_dir: str) -> tuple[object, str] | None:
    """(filesystem, path) of the newest whole checkpoint of ``run_dir``, whichever host wrote
    it: the in-process host's newest marked folder, or the one Ray Train's snapshot names."""
    from distributed.training.local_hosts import checkpoints

    fs, inner = storage.resolve(run_dir)
    found = checkpoints(run_dir)
    if found:
        return fs, found[-1][1]
    snapshot = posixpath.join(inner, RAY_TRAIN_SNAPSHOT)
    if fs.get_file_info(snapshot).type != pafs.FileType.File:
        return None
    with fs.open_input_file(snapshot) as f:
        latest = (json.load(f).get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return (fs, posixpath.join(inner, latest)) if latest else None


def _read(run_dir: str) -> dict | None:
    path = storage.join(run_dir, RUN_FILE)
    if not storage.exists(path):
        return None
    try:
        record = json.loads(storage.read_bytes(path))
        if record.get("schema") != RUN_SCHEMA:
            raise ValueError(f"schema {record.get('schema')!r}, this code reads {RUN_SCHEMA}")
        return record
    except (ValueError, AttributeError) as err:
        raise UsageError(f"{path}: not a readable run file ({err}); pass a new --name") from None


def claim(run_dir: str, ident: dict, host: str, shards: str) -> Resume | None:
    """Check a fit's inputs against what ``run_dir`` was trained with, before any work.

    No checkpoint yet: the run file is (re)written with these inputs, None is returned. A
    checkpoint and the same inputs and host: where the fit continues (:class:`Resume`). Any
    difference: ``UsageError`` naming each one."""
    newest = newest_checkpoint(run_dir)
    if newest is None:
        body = {"schema": RUN_SCHEMA, "host": host, "shards_path": shards, "identity": ident}
        storage.atomic_write_bytes(storage.join(run_dir, RUN_FILE), json.dumps(body).encode())
        return None
    record = _read(run_dir)
    if record is None:
        raise UsageError(
            f"{run_dir} holds checkpoints but no {RUN_FILE} (written by an older version): "
            "what they were trained with is unknown; pass a new --name"
        )
    diffs = differences(record.get("identity") or {}, ident, (record.get("shards_path"), shards))
    if record.get("host") != host:
        was, now = HOSTS.get(record.get("host"), record.get("host")), HOSTS[host]
        hint = "--local" if record.get("host") == "local" else "--workers N (not --local)"
        diffs.append(f"host: {was} in the checkpoint, {now} now (resume it with {hint})")
    if diffs:
        raise UsageError(
            f"{run_dir} was trained with other inputs: {'; '.join(diffs)}; pass a new --name"
        )
    fs, path = newest
    last = history_of(fs, path)[-1]
    fold, epoch = int(last["fold_index"]), int(last["epoch"])
    finished = fold == len(ident["folds"]) - 1 and epoch == ident["config"]["epochs"] - 1
    return Resume(path, fs, fold, epoch, finished, _fold_text(ident["folds"][fold]))
