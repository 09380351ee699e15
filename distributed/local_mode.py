"""Ray Train's local mode (``ScalingConfig(num_workers=0)``) with what it leaves to the caller.

In local mode Ray 2.60 runs the training function in the calling process: the same
``ray.train`` calls work (``get_context``, ``get_dataset_shard`` returns the whole dataset,
``report``), but no worker group is started (about 0.2 s instead of 15-30 s per fit). It also
leaves out three things the worker-group path does for us, which this module supplies:

- **checkpoints**: ``ray.train.report`` only keeps a reference to the checkpoint's directory
  (a temporary one in our loop), nothing is written to the run's storage. Here each reported
  checkpoint is copied to ``STORAGE/NAME/checkpoint_NNNNNN`` (the last two are kept, as on the
  worker group), a marker file written last says it is whole;
- **resume**: ``ray.train.get_checkpoint()`` is always None at the start. The newest whole
  checkpoint under ``STORAGE/NAME`` is returned instead, so a re-run of the same fit (a restored
  Tune trial, ``distributed.train`` again with the same ``--out``/``--name``) continues where it
  stopped, as a worker group restores from its checkpoint-manager snapshot;
- **Tune**: inside a Tune trial Ray 2.60 refuses ``ray.train.get_context``, ``get_checkpoint``
  and ``report`` ("deprecated when running in a function passed to Ray Tune"), also in local
  mode and also where Ray itself calls them (``prepare_model``); and run-config callbacks
  (``TuneReportCallback``) are never called. :func:`tune_session_set_aside` therefore tells
  Ray's check that the thread running a local fit is not in a Tune session (the loop then uses
  the plain ``ray.train`` calls, as on a worker group; the trial's session stays in place for
  Tune's own thread), and :func:`report` passes each report on to the trial's session with the
  metrics and ``checkpoint_path`` that ``TuneReportCallback`` would send. It replaces one
  internal of Ray (``ray.tune.trainable.trainable_fn_utils._in_tune_session``, looked up at
  each call by Ray's check) by a thread-aware wrapper: pinned by ``ray==2.60.*`` and covered by
  the tests that run searches.

There are no Train-level retries in local mode (``FailureConfig`` is not used): a crash ends the
fit and a re-run resumes from the last checkpoint. Multi-worker DDP stays on the worker group.
"""

from __future__ import annotations

import contextlib
import posixpath
import threading
from collections.abc import Iterator

import pyarrow.fs as pafs

from datasets import storage

LOCAL_KEY = "local_mode"  # in the loop config: {"dir": STORAGE/NAME, "tune": bool}
COMPLETE = ".complete"
KEEP = 2
PREFIX = "checkpoint_"


def loop_settings(storage_path: str, name: str, in_tune: bool) -> dict:
    return {"dir": storage.join(storage_path, name), "tune": in_tune}


def _checkpoints(root: str) -> list[tuple[int, str]]:
    """(index, inner path) of the whole checkpoints under ``root``, oldest first."""
    fs, inner = storage.resolve(root)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return []
    found = []
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=False)):
        name = info.base_name
        if info.type != pafs.FileType.Directory or not name.startswith(PREFIX):
            continue
        suffix = name[len(PREFIX) :]
        if not suffix.isdigit():
            continue
        if fs.get_file_info(posixpath.join(info.path, COMPLETE)).type == pafs.FileType.File:
            found.append((int(suffix), info.path))
    return sorted(found)


def _checkpoint(fs, path: str):
    from ray.train import Checkpoint

    return Checkpoint(path, filesystem=fs)


_aside = threading.local()  # .on: this thread runs a local fit inside a Tune trial


def _install_check() -> None:
    from ray.tune.trainable import trainable_fn_utils as fn_utils

    original = fn_utils._in_tune_session
    if getattr(original, "_emovis", False):
        return

    def in_tune_session() -> bool:
        return False if getattr(_aside, "on", False) else original()

    in_tune_session._emovis = True
    fn_utils._in_tune_session = in_tune_session


@contextlib.contextmanager
def tune_session_set_aside() -> Iterator[None]:
    """Inside a Tune trial: this thread's local-mode fit is not "in Tune" (see module doc)."""
    _install_check()
    _aside.on = True
    try:
        yield
    finally:
        _aside.on = False


def _report_to_tune(metrics: dict) -> None:
    from ray.train._internal.session import get_session

    get_session().report(metrics)


def get_checkpoint(config: dict):
    """``ray.train.get_checkpoint()``, or in local mode the newest whole saved checkpoint."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    local = config.get(LOCAL_KEY)
    if ckpt is not None or not local:
        return ckpt
    found = _checkpoints(local["dir"])
    if not found:
        return None
    fs, _ = storage.resolve(local["dir"])
    return _checkpoint(fs, found[-1][1])


def persist(directory: str, root: str):
    """Copy a checkpoint directory to ``root/checkpoint_NNNNNN`` (marker last), drop all but the
    newest ``KEEP``; returns the stored Checkpoint."""
    fs, inner = storage.resolve(root)
    found = _checkpoints(root)
    index = found[-1][0] + 1 if found else 0
    dest = posixpath.join(inner, f"{PREFIX}{index:06d}")
    fs.create_dir(dest, recursive=True)
    pafs.copy_files(
        directory, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )
    with fs.open_output_stream(posixpath.join(dest, COMPLETE)) as f:
        f.write(b"")
    for _, old in found[: max(0, len(found) + 1 - KEEP)]:
        fs.delete_dir(old)
    return _checkpoint(fs, dest)


def report(config: dict, metrics: dict, directory: str | None) -> None:
    """``ray.train.report(metrics, checkpoint)``; in local mode the checkpoint is stored first
    and, inside a Tune trial, the report is passed on to Tune."""
    import ray.train
    from ray.train import Checkpoint

    local = config.get(LOCAL_KEY)
    if not local:
        checkpoint = Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint)
        return
    checkpoint = persist(directory, local["dir"]) if directory else None
    ray.train.report(metrics, checkpoint=checkpoint)
    if local.get("tune"):
        extra = {"checkpoint_path": checkpoint.path} if checkpoint is not None else {}
        _report_to_tune({**metrics, **extra})
