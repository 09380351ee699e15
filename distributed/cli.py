"""What every command-line entry point shares: the errors a user can fix, and how they end.

Libraries raise typed errors (:class:`UsageError`, ``ConfigError``, ``ManifestError``,
``CheckpointError``, ``BadInput``); only a CLI's ``main`` turns them into one line on stderr and
exit code 2, through :func:`run`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UsageError(ValueError):
    """A misuse the user can fix (a flag, a file, a combination); the message says what to do."""


def user_errors() -> tuple[type[BaseException], ...]:
    from datasets.manifest import ManifestError
    from datasets.protocols import ProtocolError
    from datasets.records import BadInput
    from distributed.checkpoint import CheckpointError
    from distributed.config import ConfigError

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
    """Run a CLI body; a user error becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        return main()
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
