"""One error base class: what a user can fix, said in one line, mapped to an exit code.

Every stage raises subclasses of :class:`GristmillError` for problems of input, config or state
that the user can fix (a missing file, a bad value, an empty corpus); anything else is a bug and
keeps its traceback. :func:`run_command` is how a command line (``gristmill``, or a stage's own
``python -m`` entry point) turns them into a message and an exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses of every gristmill command (README, docs/operations.md): what a scheduler can act on."""

    OK = 0
    #: a bug: the command printed a traceback
    INTERNAL = 1
    #: usage or config error, or another problem the message says how to fix
    USAGE = 2
    #: training stopped: the loss or gradient became NaN/inf (the last good checkpoint is kept)
    DIVERGED = 3
    #: input files that cannot be read at all
    INPUT = 4
    #: another run holds the output (or is writing what this run reads)
    LOCKED = 5
    #: the counts do not balance (read != kept + dropped), or `gristmill verify` found a difference
    INTEGRITY = 6


class GristmillError(Exception):
    """A problem the user can fix; the message says what to change."""

    #: exit status of a command that stops with this error
    exit_code = ExitCode.USAGE
    #: how the command line introduces the message
    label = "error"


def run_command(command: str, fn: Callable[[], int]) -> int:
    """Run a command; errors the user can fix print one line (``gristmill COMMAND: error: ...``)
    and return their exit code instead of a traceback. A missing file counts as such an error."""
    try:
        return fn()
    except GristmillError as e:
        print(f"gristmill {command}: {e.label}: {e}", file=sys.stderr)
        return int(e.exit_code)
    except FileNotFoundError as e:
        print(f"gristmill {command}: error: {e}", file=sys.stderr)
        return int(ExitCode.USAGE)
