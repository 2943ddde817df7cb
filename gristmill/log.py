"""The one logging setup: rich on a terminal, plain lines otherwise (CI, cluster logs)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from gristmill.errors import Terminated, is_disk_full, received_stop_signal
from gristmill.secrets import RedactSecrets

# Harmless import-time warnings of Beam's optional cloud extras, printed on every run.
_KNOWN_NOISE = ("Failed to import GCSFileSystem", "apitools not found", "Missing pipeline option (runner)",
                "Finished listing ", "ReadFromBigQuery transform *CANNOT*")
#: chatty at INFO (botocore: "Found credentials in environment variables" on every client); their warnings kept
_CHATTY_LOGGERS = ("apache_beam", "distributed", "urllib3", "absl", "trafilatura", "botocore", "google")


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in _KNOWN_NOISE)


class _DropSignalTracebacks(logging.Filter):
    """A run stopped by SIGINT/SIGTERM unwinds through Beam, which logs the interrupt at ERROR with a
    traceback; the command line says in one line that the run was interrupted (gristmill.errors)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        return not (received_stop_signal() or issubclass(record.exc_info[0], (KeyboardInterrupt, Terminated)))


class _DropDiskFullTracebacks(logging.Filter):
    """A full disk fails the step that wrote; Beam logs it at ERROR with the worker's traceback before the
    command says in one line where the disk is full and what to do (gristmill.errors.DiskFullError): the
    record is kept, without its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_disk_full(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


#: the loggers Beam's import-time noise is logged on (a filter acts on records of the logger it is added to)
_NOISY_LOGGERS = ("", "apache_beam.io.filesystems", "apache_beam.options.pipeline_options")


def quiet_library_noise() -> None:
    """What the Python API does on import, so that it prints what the CLI prints: the known, harmless
    import-time lines of Beam's optional extras are dropped where they are logged (nothing else is touched:
    the user's logging stays the user's), and gRPC's fork INFO lines are off unless GRPC_VERBOSITY is set."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in _NOISY_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in target.filters):
            target.addFilter(_DropKnownNoise())


def drop_known_noise() -> None:
    """In a process without gristmill's logging (a Ray task): Beam's import-time warnings about its
    optional cloud extras are dropped (they are logged on the root logger and Beam's own)."""
    root = logging.getLogger()
    for target in (root, *root.handlers):
        if not any(isinstance(f, _DropKnownNoise) for f in target.filters):
            target.addFilter(_DropKnownNoise())
            target.addFilter(RedactSecrets())
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    for noisy in _CHATTY_LOGGERS[1:]:
        logging.getLogger(noisy).setLevel(max(logging.getLogger(noisy).level, logging.WARNING))


class _AboveProgressBars(logging.Handler):
    """Emits through ``inner`` with tqdm's bars cleared first and redrawn after: a log line never
    prints into a progress bar (tqdm's logging_redirect_tqdm only swaps plain stream handlers)."""

    def __init__(self, inner: logging.Handler):
        super().__init__(inner.level)
        self.inner = inner
        self.addFilter(_DropKnownNoise())
        self.addFilter(_DropSignalTracebacks())
        self.addFilter(_DropDiskFullTracebacks())
        self.addFilter(RedactSecrets())  # last: only records that will be printed are formatted

    def emit(self, record: logging.LogRecord) -> None:
        if "tqdm" not in sys.modules:  # no bar can exist: skip the import
            self.inner.handle(record)
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            self.inner.handle(record)


def setup_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    level = getattr(logging, os.environ.get("GRISTMILL_LOG_LEVEL", ""), level)
    root = logging.getLogger()
    root.handlers.clear()
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="%H:%M:%S"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(_AboveProgressBars(handler))
    root.setLevel(level)
    # Beam and friends are chatty at INFO; keep their warnings
    for noisy in _CHATTY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """-v/-q, for every command (``setup_logging(verbosity(args))``)."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def verbosity(args: argparse.Namespace) -> int:
    return -1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0)
