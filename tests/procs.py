"""The processes a command under test started (Linux ``/proc``): to show it left none behind."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name: state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of every process below ``pid`` (Ray's workers rename themselves, so
    they are found by parentage, not by name)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (fields := _stat(proc.name)) is not None:
            children.setdefault(int(fields[1]), []).append(int(proc.name))
            started[int(proc.name)] = fields[19]
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = started[child]
            todo.append(child)
    return found


def alive(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` (from :func:`descendants`) still running: same pid, same start."""
    return [
        pid
        for pid, start in processes.items()
        if (fields := _stat(pid)) is not None and fields[19] == start and fields[0] != "Z"
    ]


def in_session(sid: int) -> list[int]:
    """Every live process of session ``sid`` (a command started with ``start_new_session``):
    what it left behind once it has exited, orphans included."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (fields := _stat(proc.name)) is not None:
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(proc.name))
    return found
