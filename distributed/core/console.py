"""What a person at the console sees: our lines on the terminal, everyone else's in a log file.

``capture(log_dir)`` sends file descriptors 1 and 2 of this process, and with them everything
Ray, Tune, Ray Data, Optuna and the workers (whose output Ray forwards to the driver) print, to
``LOG_DIR/<command>-<time>.log``; the lines of this project go to the terminal through
:func:`emit` (and into the log too). Ray processes started inside the capture inherit the log
file as their stdout/stderr. On leaving, the terminal is given back, so an error message or a real
traceback after it reaches the person. ``verbose=True`` captures nothing (the old behaviour).
Ray's teardown sometimes reports an exception in ``Dataset.__del__`` ("Exception ignored in ...
'_current_executor'"): harmless, and sent to the log whatever the mode, by ``sys.unraisablehook``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

_active: Console | None = None


@dataclass
class Console:
    """The terminal stream, the log file (or None) and the clock of one command."""

    stream: object
    log_path: str | None = None
    started: float = field(default_factory=time.time)

    def emit(self, line: str = "") -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        if self.log_path is not None:  # our lines also belong in the log, in order
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def elapsed(self) -> float:
        return time.time() - self.started


def current() -> Console:
    """The console of the running command (a plain stdout one outside :func:`capture`)."""
    return _active if _active is not None else Console(sys.stdout)


def emit(line: str = "") -> None:
    current().emit(line)


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta(elapsed: float, done: float, total: float) -> str:
    """``elapsed 1:02, ~3:10 left`` (no estimate before any work is done)."""
    if done <= 0 or total <= 0:
        return f"elapsed {clock(elapsed)}"
    left = elapsed / done * max(total - done, 0.0)
    return f"elapsed {clock(elapsed)}, ~{clock(left)} left"


def _unraisable(hook):
    def handler(unraisable) -> None:
        if isinstance(unraisable.exc_value, AttributeError) and "_current_executor" in str(
            unraisable.exc_value
        ):
            logging.getLogger("emovis").debug(
                "ignored at teardown: %s in %r", unraisable.exc_value, unraisable.object
            )
            return
        hook(unraisable)

    return handler


def quiet_teardown() -> None:
    """Keep Ray Data's harmless teardown exception (``Dataset.__del__``) off the console."""
    if getattr(sys.unraisablehook, "_emovis", False):
        return
    handler = _unraisable(sys.unraisablehook)
    handler._emovis = True
    sys.unraisablehook = handler


def log_dir_of(root: str, name: str) -> tuple[str, str]:
    """Where a run's log files go: ROOT/logs (ROOT = STORAGE/NAME), or for remote storage a
    local ``logs/NAME``, with a note saying so."""
    from datasets import storage

    local = storage.local_path(root)
    if local is not None:
        return os.path.join(local, "logs"), ""
    return os.path.abspath(os.path.join("logs", name)), " (local: the storage is remote)"


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@contextlib.contextmanager
def capture(log_dir: str, command: str, verbose: bool = False) -> Iterator[Console]:
    """Route this process's output to a log file, our lines to the terminal (see module doc)."""
    global _active
    quiet_teardown()
    if verbose or _active is not None:
        outer = _active
        _active = _active or Console(sys.stdout)
        try:
            yield _active
        finally:
            _active = outer
        return
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8")
    log = open(path, "a", buffering=1, encoding="utf-8")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    _active = Console(terminal, path)
    ray_before = _ray_running()
    try:
        yield _active
    finally:
        _active = None
        if not ray_before and _ray_running():
            # a Ray instance this run started: stopped while its last log lines (Ray's
            # "[repeated Nx across cluster]" summaries, flushed at shutdown) still go to the log
            import ray

            ray.shutdown()
        logging.getLogger().removeHandler(handler)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        terminal.close()
        log.close()


class Bar:
    """One progress line (done/total, items/s, ETA): redrawn in place on a terminal, a plain
    line every ``step`` percent otherwise."""

    def __init__(self, what: str, total: int, step: int = 25):
        self.what, self.total, self.step = what, max(total, 0), step
        self.done, self.t0, self._next = 0, time.time(), step
        self.console = current()

    def _line(self) -> str:
        dt = time.time() - self.t0
        rate = self.done / dt if dt > 0 else 0.0
        pct = 100 * self.done / self.total if self.total else 100
        return f"{self.what}: {self.done}/{self.total} ({pct:.0f}%), {rate:.1f} items/s, " + eta(
            dt, self.done, self.total
        )

    def update(self, n: int) -> None:
        self.done += n
        pct = 100 * self.done / self.total if self.total else 100
        if self.console.isatty():
            self.console.stream.write("\r" + self._line())
            self.console.stream.flush()
        elif pct >= self._next or self.done >= self.total:
            self.console.emit(self._line())
            while self._next <= pct:
                self._next += self.step

    def close(self) -> None:
        if self.console.isatty():
            self.console.stream.write("\r" + self._line() + "\n")
            self.console.stream.flush()
