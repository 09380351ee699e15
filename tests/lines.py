"""Assertions shared by the misuse tests: an error is one line, starting "error: "."""

from __future__ import annotations


def one_line_error(err: str, *needles: str) -> str:
    """The one non-empty line of ``err`` (stderr of a refused command), which must start with
    ``error: ``, hold every needle and come without a traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, err)
    return lines[0]
