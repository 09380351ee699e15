"""What every command-line entry point shares: the errors a user can fix, and how they end.

Libraries raise typed errors (:class:`UsageError`, ``ConfigError``, ``ManifestError``,
``CheckpointError``, ``BadInput``); only a CLI's ``main`` turns them into one line on stderr and
exit code 2, through :func:`run` (a job that ran and failed, :class:`JobFailed`: exit code 1).
:class:`Parser` says a bad flag in such a line too, and the number types below check counts and
resources as the command line is read, before any work. A long job stops on SIGINT or SIGTERM
inside :func:`stop_on_signals` and exits 130 or 143 after saying in one line what it kept.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator


class UsageError(ValueError):
    """A misuse the user can fix (a flag, a file, a combination); the message says what to do."""


class JobFailed(RuntimeError):
    """A job that ran and could not produce its result (every trial of a search failed, ...):
    what went wrong has been printed, the message says where to look. Exit code 1."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``error: <what>``, exit code 2."""

    def error(self, message: str):
        flag, sep, rest = message.partition(": must be ")
        if sep and flag.startswith("argument "):  # one of the number types below
            message = f"{flag[len('argument ') :]} must be {rest}"
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def _number(text: str, kind: type, what: str, ok: Callable[[float], bool]):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def count(text: str) -> int:
    """An argument type: a whole number >= 1 (trials, epochs, folds, workers, ...)."""
    return _number(text, int, "a whole number >= 1", lambda v: v >= 1)


def natural(text: str) -> int:
    """An argument type: a whole number >= 0 (a seed; ``--workers``, where 0 runs in-process)."""
    return _number(text, int, "a whole number >= 0", lambda v: v >= 0)


def positive(text: str) -> float:
    """An argument type: a finite number > 0 (CPUs)."""
    return _number(text, float, "a number > 0", lambda v: v > 0)


def non_negative(text: str) -> float:
    """An argument type: a finite number >= 0 (GPUs or a fraction of one, GiB)."""
    return _number(text, float, "a number >= 0", lambda v: v >= 0)


def check_output_file(path: str, flag: str) -> None:
    """The file ``path`` can be written: it is not a folder, and its folder exists (or can be
    made) and takes a new file. Checked before any work, so that none is lost to it."""
    import posixpath

    import pyarrow.fs as pafs

    from datasets import storage
    from datasets.records import BadInput

    if storage.is_uri(path):
        parent = posixpath.dirname(path.rstrip("/"))
    else:
        parent = os.path.dirname(os.path.abspath(path))
    try:
        fs, inner = storage.resolve(path)
        try:
            is_dir = fs.get_file_info(inner).type == pafs.FileType.Directory
        except OSError:
            is_dir = False  # an unreachable store: said by the folder's check below
        if is_dir:
            raise UsageError(f"{flag} {path} is a folder; give the name of a file to write")
        storage.ensure_writable_dir(parent, f"{flag} folder")
    except BadInput as err:
        raise UsageError(f"{flag} {path}: {err.reason}") from None


def user_errors() -> tuple[type[BaseException], ...]:
    from datasets.manifest import ManifestError
    from datasets.protocols import ProtocolError
    from datasets.records import BadInput
    from distributed.core.config import ConfigError
    from distributed.training.checkpoint import CheckpointError

    return (
        UsageError,
        ConfigError,
        ManifestError,
        ProtocolError,
        CheckpointError,
        BadInput,
        FileNotFoundError,
    )


def run(main: Callable[[], int]) -> int:
    """Run a CLI body; a user error becomes ``error: <message>`` on stderr and exit code 2, a
    failed job the same line and exit code 1."""
    try:
        return main()
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except JobFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def at_least(flag: str, value: float | None, minimum: float, what: str = "") -> None:
    """Refuse ``flag``'s value below ``minimum`` (None: the flag was not given) before any work,
    as a :class:`UsageError`: ``--per-shard must be >= 1 (items per shard), got 0``."""
    if value is not None and value < minimum:
        why = f" ({what})" if what else ""
        raise UsageError(f"{flag} must be >= {minimum}{why}, got {value}")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


class Stop:
    """Which signal stopped a command (SIGINT unless SIGTERM came): see :func:`stop_on_signals`."""

    def __init__(self) -> None:
        self.signum = int(signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """Within this block SIGINT and SIGTERM both raise ``KeyboardInterrupt`` in the main thread
    and the yielded :class:`Stop` says which one came; a second signal, while the first one's
    clean-up runs, ends the process at once. The previous handlers come back on leaving.

    A plain ``KeyboardInterrupt``, not a subclass carrying the signal: Ray's waits turn any
    ``KeyboardInterrupt`` raised by a handler into a new, bare one."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # Python delivers signals to the main thread only
        return
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    # Tune's fit would otherwise put its own SIGINT handler in place of ours: one that ends the
    # experiment "gracefully" and returns as if it had finished (a search one trial short)
    tune_env = os.environ.get(TUNE_SIGINT_ENV)
    os.environ[TUNE_SIGINT_ENV] = "1"

    def again(signum, frame) -> None:
        end_descendants()  # a local Ray's processes would outlive an os._exit
        name = signal.Signals(signum).name
        os.write(2, f"interrupted again ({name}): ended at once; finished work is kept\n".encode())
        os._exit(128 + signum)

    def first(signum, frame) -> None:
        stop.signum = signum
        for s in STOP_SIGNALS:
            signal.signal(s, again)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for s in STOP_SIGNALS:
        signal.signal(s, first)
    try:
        yield stop
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if tune_env is None:
            os.environ.pop(TUNE_SIGINT_ENV, None)
        else:
            os.environ[TUNE_SIGINT_ENV] = tune_env


def start_over(module: str, argv: list[str] | None) -> Callable[[], str]:
    """The interrupt line of a command that keeps nothing partial and starts over when run
    again (evaluate, predict, export, fusion)."""
    args = sys.argv[1:] if argv is None else list(argv)
    again = shlex.join(["python", "-m", module, *args])
    return lambda: f"nothing written; the same command starts over: {again}"


def run_stoppable(main: Callable[[], int], stopped: Callable[[], str]) -> int:
    """:func:`run` inside :func:`stop_on_signals`: on SIGINT or SIGTERM the Ray connection this
    command made (and a local instance it started, with its workers) is shut down,
    ``interrupted (SIGINT):`` and ``stopped()`` (what was kept, and the command that continues)
    go to stderr as one line, and the exit code is 130 or 143. Nothing after the interrupt is
    written."""

    def ray_up() -> bool:
        ray = sys.modules.get("ray")
        return ray is not None and ray.is_initialized()

    ours = not ray_up()  # a Ray the caller started (Python, tests) is the caller's to stop
    with stop_on_signals() as stop:
        try:
            return run(main)
        except KeyboardInterrupt:
            pass  # leaving the handler drops the interrupted frames
        # ... and collecting closes the generators they held while Ray is still up (a Ray Data
        # iterator reports to Ray as it closes: after the shutdown that is a traceback)
        gc.collect()
        if ours and ray_up():
            sys.modules["ray"].shutdown()
        print(f"interrupted ({stop.name}): {stopped()}", file=sys.stderr, flush=True)
        return stop.exit_code


def end_descendants() -> int:
    """SIGKILL every process this one started, and theirs (Linux's ``/proc``; elsewhere none is
    found): what a second Ctrl-C leaves no time to shut down gracefully. Returns how many."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:  # "pid (comm) state ppid ..."
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(found)


@contextlib.contextmanager
def signal_handlers_kept() -> Iterator[None]:
    """Run a call that installs its own signal handlers (``ray.init`` makes SIGTERM a plain
    ``sys.exit``) and put back the ones that were there before it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:
                signal.signal(s, handler)
