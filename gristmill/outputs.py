"""Output directories gristmill writes: a marker file says which command wrote one, and a command
refuses, before writing anything, a directory another command (or a user) owns, unless told to
overwrite it. Core: every stage uses it, it imports no stage."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator

from gristmill import __version__, io
from gristmill.errors import ExitCode, GristmillError, disk_full_error, interrupt_code, is_disk_full
from gristmill.secrets import redact_argv, redact_text

#: what the marker file of an output directory says, by kind of output
MARKERS = {"corpus": b"gristmill corpus output\n", "tokens": b"gristmill token shards\n",
           "tokenizer": b"gristmill tokenizer\n", "quality": b"gristmill quality model\n",
           "ablation": b"gristmill ablation\n"}
KINDS = {"corpus": "a corpus", "tokens": "token shards", "tokenizer": "a tokenizer", "quality": "a quality model",
         "ablation": "an ablation"}


class OutputDirError(GristmillError):
    """An output directory gristmill must not write into; the message says which to use."""


# ---------------------------------------------------------------------------------------------
# The output directory of a run
# ---------------------------------------------------------------------------------------------


def check_output(output: str, kind: str, overwrite: bool) -> None:
    """Refuse (before writing anything) an output that holds something else: a directory gristmill
    did not write, or one holding another kind of output (token shards written over a corpus would
    replace its manifest). ``overwrite`` allows both."""
    if io.is_remote(output):  # a prefix: exists() does not see it, its listing does
        try:
            present = bool(io.filesystems().match([io.join(output, "*")])[0].metadata_list)
            # a missing bucket lists as empty: a small object written and deleted finds it (and missing rights)
            probe = io.temporary_name(io.join(output, ".gristmill-write-probe"))
            with _beam_quiet():  # Beam logs the store's refusal with a traceback; the error below says it
                with io.filesystems().create(probe, compression_type="uncompressed") as f:
                    f.write(b"gristmill checks that it may write here\n")
                io.delete([probe])
        except Exception as e:  # noqa: BLE001 - Beam wraps the store's error
            raise OutputDirError(f"cannot list and write the output {output}: {_root_cause(e)} (does the bucket "
                                 "exist, and may these credentials list and write it?)") from None
        if overwrite or not present:
            return
    elif overwrite or not io.exists(output):
        return
    marker = io.join(output, io.OUTPUT_MARKER)
    if io.exists(marker):
        found = io.read_bytes(marker)
        if found != MARKERS[kind]:
            other = next((k for k, m in MARKERS.items() if m == found), "another gristmill output")
            what = KINDS.get(other, other)
            raise OutputDirError(f"{output} holds {what} (written by gristmill); writing {KINDS[kind]} there would "
                                 "replace its files: choose another directory (or pass --overwrite)")
        return
    if io.filesystems().match([io.join(output, "*")])[0].metadata_list:
        raise OutputDirError(f"output directory {output} is not empty and was not written by gristmill; "
                             "choose an empty or new directory (or pass --overwrite)")


class _DropBeamRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "apache_beam" not in record.pathname


@contextlib.contextmanager
def _beam_quiet():
    """Beam's filesystems log on the root logger: its records are dropped for the block."""
    root, drop = logging.getLogger(), _DropBeamRecords()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _root_cause(e: BaseException) -> str:
    """The innermost message of an error Beam wrapped (BeamIOError holds a dict of per-path exceptions)."""
    inner = getattr(e, "exception_details", None)
    while isinstance(inner, dict) and inner:
        e = next(iter(inner.values()))
        inner = getattr(e, "exception_details", None)
    return f"{type(e).__name__}: {e}"[:500]


def begin_output(output: str, kind: str) -> None:
    """Mark the directory as this kind of gristmill output, in progress: its manifest (a finished
    earlier run's) goes first, so no reader takes files being replaced for a finished output."""
    io.write_bytes_atomic(io.join(output, io.OUTPUT_MARKER), MARKERS[kind])
    manifest = io.join(output, "manifest.json")
    if io.exists(manifest):
        io.delete([manifest])


# ---------------------------------------------------------------------------------------------
# run.json: how a run ended, for monitoring
# ---------------------------------------------------------------------------------------------

RUN_FILE = "run.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@contextlib.contextmanager
def recorded_run(output: str, command: str) -> Iterator[dict]:
    """``OUTPUT/run.json`` for monitoring: written as ``running`` at the start and rewritten at the
    end, also when the run fails (status, exit code, error) or is stopped by SIGINT/SIGTERM
    (``interrupted``, 130/143). The caller adds what it learnt (counts, inputs) to the dict it is
    given. A run killed outright (SIGKILL) leaves ``running`` with its pid. The command line is
    written without its credentials (gristmill.secrets)."""
    record = {"command": command, "status": "running", "exit_code": None, "started": _now(), "finished": None,
              "host": socket.gethostname(), "pid": os.getpid(), "argv": redact_argv(sys.argv),
              "gristmill_version": __version__}
    path = io.join(output, RUN_FILE)
    io.write_json_atomic(path, record)
    try:
        yield record
    except BaseException as e:
        if not isinstance(e, GristmillError) and interrupt_code(e) is None and is_disk_full(e):
            named = disk_full_error(output, command)  # the path, the free space, what to do; its own exit code
            named.__cause__ = e
            e = named
        signalled = interrupt_code(e)
        code = (signalled if signalled is not None else e.exit_code if isinstance(e, GristmillError)
                else ExitCode.USAGE if isinstance(e, FileNotFoundError) else ExitCode.INTERNAL)
        record.update(status="interrupted" if signalled is not None else "failed", exit_code=int(code),
                      finished=_now(), error=redact_text(f"{type(e).__name__}: {e}")[:2000])
        with contextlib.suppress(Exception):  # the original error is what matters
            io.write_json_atomic(path, record)
        if e is not sys.exc_info()[1]:
            raise e
        raise
    record.update(status="succeeded", exit_code=int(ExitCode.OK), finished=_now())
    io.write_json_atomic(path, record)
