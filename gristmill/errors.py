"""One error base class: what a user can fix, said in one line, mapped to an exit code.

Every stage raises subclasses of :class:`GristmillError` for problems of input, config or state
that the user can fix (a missing file, a bad value, an empty corpus); anything else is a bug and
keeps its traceback. :func:`run_command` is how a command line (``gristmill``, or a stage's own
``python -m`` entry point) turns them into a message and an exit status.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from enum import IntEnum

from gristmill.format import size
from gristmill.secrets import redact_text


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
    #: no space left on a device the command writes to (or a disk quota reached): free space and run the same
    #: command again (it resumes where it can)
    DISK_FULL = 7
    #: stopped by SIGINT (Ctrl-C): 128 + 2, as a shell reports it
    INTERRUPTED = 130
    #: stopped by SIGTERM (what systemd, Airflow and Kubernetes send to stop a job): 128 + 15
    TERMINATED = 143


class GristmillError(Exception):
    """A problem the user can fix; the message says what to change."""

    #: exit status of a command that stops with this error
    exit_code = ExitCode.USAGE
    #: how the command line introduces the message
    label = "error"


class DiskFullError(GristmillError):
    """No space left on the device the command writes to; the message names the path and the free space."""

    exit_code = ExitCode.DISK_FULL
    label = "disk full"


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("[Errno 28]", "No space left on device", "[Errno 122]", "Disk quota exceeded")


def is_disk_full(e: BaseException) -> bool:
    """``e`` or an error it was raised from is "no space left on device" (or "disk quota exceeded"): also
    when a runner re-raised it as another type with the original's text (Beam: ``RuntimeError: OSError:
    [Errno 28] No space left on device [while running 'ReadClean']``)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        if any(t in str(e) for t in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full_error(path: str, command: str = "") -> DiskFullError:
    """The error to raise for a full disk under ``path``: where, how much is free, what to do."""
    import shutil

    free = ""
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe.rstrip("/"))
    if probe:
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(probe)
            free = f" ({size(usage.free)} free of {size(usage.total)})"
    again = f"`gristmill {command}` again" if command else "the same command again"
    return DiskFullError(f"no space left on the device of {path}{free}: free space there (or write elsewhere), "
                         f"then run {again}; it resumes from what was written")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as Python raises :class:`KeyboardInterrupt` for SIGINT: the
    run unwinds the same way (run.json says interrupted, temporaries removed, lock released)."""


#: the stop signal this process received while running a command (None: none)
_received: int | None = None


def received_stop_signal() -> int | None:
    """SIGINT or SIGTERM if one arrived during the current command: then whatever error the run ends
    with (a runner may wrap the interrupt in an error of its own) is that interrupt."""
    return _received


def interrupt_code(e: BaseException) -> int | None:
    """The exit status (128 + signal) of a run stopped by a signal, None for any other end."""
    if _received is not None:
        return 128 + _received
    if isinstance(e, KeyboardInterrupt):
        return int(ExitCode.INTERRUPTED)
    if isinstance(e, Terminated):
        return int(ExitCode.TERMINATED)
    return None


def _on_stop_signal(signum, frame):
    global _received
    _received = signum
    # with an argument: Beam re-raises an error as "the same type, its message + the step's name" from
    # args[0], and a KeyboardInterrupt without one came back as a RuntimeError
    if signum == signal.SIGINT:
        raise KeyboardInterrupt("SIGINT")
    raise Terminated("SIGTERM")


#: whether stop_signals_raise is active (the handlers are ours), and what to do before exiting on a stop signal
_active = False
_at_stop: list[Callable[[], None]] = []


def reinstall_stop_handlers() -> None:
    """Take SIGINT and SIGTERM back after a library installed its own handlers (``ray.init`` installs a
    C++ handler that aborts the process on SIGTERM); a no-op outside a command."""
    if _active and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _on_stop_signal)


def at_stop(fn: Callable[[], None]) -> None:
    """Run ``fn`` when a stop signal ends the current command, before the process exits (a Ray this
    process started is shut down: exiting at once would leave its processes behind)."""
    _at_stop.append(fn)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise (:class:`KeyboardInterrupt`, :class:`Terminated`) in the main thread for
    the block and are remembered (:func:`received_stop_signal`). SIGTERM's default action would end the
    process on the spot: run.json left "running", temporaries left behind."""
    global _received, _active
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received, _active = None, True
    _at_stop.clear()
    previous = {s: signal.signal(s, _on_stop_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        _active = False
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_command(command: str, fn: Callable[[], int]) -> int:
    """Run a command; errors the user can fix print one line (``gristmill COMMAND: error: ...``)
    and return their exit code instead of a traceback. A missing file counts as such an error.

    SIGINT (Ctrl-C) and SIGTERM stop the command: the run unwinds (its ``finally`` blocks record
    run.json, remove temporaries, release locks), then the process exits at once with 130 or 143.
    At once, because threads a runner started (Beam's workers, gRPC) may still be busy and
    Python's normal exit would wait for them forever."""
    with stop_signals_raise():
        try:
            return fn()
        except BaseException as e:
            code = interrupt_code(e)
            if code is not None:
                name = signal.Signals(code - 128).name
                print(f"gristmill {command}: interrupted by {name}: stopped (run the same command again to resume)",
                      file=sys.stderr)
                for hook in reversed(_at_stop):
                    with contextlib.suppress(BaseException):  # a second signal must not stop the exit
                        hook()
                exit_now(code)
            if not isinstance(e, GristmillError) and is_disk_full(e):  # written outside a recorded run
                where = getattr(e, "filename", None) or next(
                    (getattr(c, "filename", None) for c in (e.__cause__, e.__context__) if c is not None), None)
                e = disk_full_error(str(where), command) if where else DiskFullError(
                    f"no space left on a device this command writes to ({e}): free space, then run the same "
                    "command again")
            if isinstance(e, GristmillError):
                print(f"gristmill {command}: {e.label}: {redact_text(str(e))}", file=sys.stderr)
                return int(e.exit_code)
            if isinstance(e, FileNotFoundError):
                print(f"gristmill {command}: error: {redact_text(str(e))}", file=sys.stderr)
                return int(ExitCode.USAGE)
            raise


def exit_now(code: int) -> None:
    """End the process with ``code`` without waiting for other threads (flushing logs and stdio first)."""
    with contextlib.suppress(Exception):
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
