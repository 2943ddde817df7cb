"""One run at a time per directory: the lock a command holds on what it writes (and a shared lock
on what it reads, so nobody rewrites it meanwhile).

On a local or network filesystem (NFS) the lock is ``fcntl.flock`` on ``DIR/.gristmill-lock``: the
kernel releases it when the process ends however it ends (``kill -9``, a lost machine's NFS
lease), so there is no stale lock to clean up by hand. The holder writes who it is (command, host,
pid, start time) into the file, so a refused run can name it; a run that finds that note left by
a holder that is gone (it crashed) says so and takes over.

Object stores (``gs://``, ``s3://``) have no locks: gristmill cannot stop two runs there and says
so in its log. Serialise runs in the scheduler instead (Airflow ``max_active_runs=1``, one cron
entry, a Kubernetes ``concurrencyPolicy: Forbid``); docs/operations.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator

from gristmill.errors import ExitCode, GristmillError
from gristmill.io import is_remote
from gristmill.secrets import redact_argv

log = logging.getLogger("gristmill.locks")

LOCK_FILE = ".gristmill-lock"


class OutputLockedError(GristmillError):
    """Another run holds the directory; the message names it."""

    exit_code = ExitCode.LOCKED
    label = "locked"


def _holder_note(command: str) -> dict:
    return {"command": command, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": redact_argv(sys.argv)}


def _describe(note: dict) -> str:
    return (f"`gristmill {note.get('command', '?')}` (pid {note.get('pid', '?')} on {note.get('host', '?')}, "
            f"started {note.get('started', '?')})")


def _read_note(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None


@contextlib.contextmanager
def directory_lock(directory: str, command: str, shared: bool = False) -> Iterator[None]:
    """Hold ``directory``'s lock for the block: exclusive to write it, ``shared`` to read it (many
    readers, no writer). Refuses at once (:class:`OutputLockedError`) when another run holds it."""
    if is_remote(directory):
        log.warning("%s is on an object store, which has no locks: make sure no other run writes it "
                    "at the same time (docs/operations.md)", directory)
        yield
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            note = _read_note(fd)
            if note:
                what = f"is being written by {_describe(note)}"
            else:
                what = "is being read by another run (a refresh or tokenize reading it)"
            hint = "wait for it to finish" + ("" if shared else ", or choose another output directory")
            raise OutputLockedError(f"{directory} {what}: {hint}") from None
        if not shared:
            previous = _read_note(fd)
            if previous:
                log.warning("%s was being written by %s, which did not finish (it crashed or was killed): "
                            "taking over", directory, _describe(previous))
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(_holder_note(command)).encode())
            os.fsync(fd)
        try:
            yield
        finally:
            if not shared:  # an end this process saw (done, failed, interrupted) leaves no note: a note
                os.ftruncate(fd, 0)  # found later means the process died without unwinding (kill -9, lost host)
    finally:
        os.close(fd)  # releases the lock
