"""Running a Beam pipeline from the driver, and the small statistics it hands back.

Both Beam pipelines of gristmill (``corpus``/``refresh`` and ``tokenize``) run through
:func:`run_pipeline` and report what the driver needs to write their manifest through
:func:`collect_stats`: each named statistic is gathered into one JSON file under
``OUTPUT/_stats/`` by the job and read back by :func:`read_stats` once it has finished. The files
are small (one entry per input file, shard or counter key), so the driver's work stays bounded
whatever the size of the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from gristmill import __version__, io
from gristmill.errors import ExitCode, GristmillError

log = logging.getLogger("gristmill.beam")

STATS_DIR = "_stats"
RUN_FILE = "run.json"
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@contextlib.contextmanager
def recorded_run(output: str, command: str) -> Iterator[dict]:
    """``OUTPUT/run.json`` for monitoring: written as ``running`` at the start and rewritten at the
    end, also when the run fails (status, exit code, error). The caller adds what it learnt
    (counts, inputs) to the dict it is given. A run killed outright leaves ``running`` with its pid."""
    record = {"command": command, "status": "running", "exit_code": None, "started": _now(), "finished": None,
              "host": socket.gethostname(), "pid": os.getpid(), "argv": sys.argv, "gristmill_version": __version__}
    path = io.join(output, RUN_FILE)
    io.write_json_atomic(path, record)
    try:
        yield record
    except BaseException as e:
        code = e.exit_code if isinstance(e, GristmillError) else (130 if isinstance(e, KeyboardInterrupt) else
                                                                   ExitCode.USAGE if isinstance(e, FileNotFoundError)
                                                                   else ExitCode.INTERNAL)
        record.update(status="interrupted" if code == 130 else "failed", exit_code=int(code), finished=_now(),
                      error=f"{type(e).__name__}: {e}"[:2000])
        with contextlib.suppress(Exception):  # the original error is what matters
            io.write_json_atomic(path, record)
        raise
    record.update(status="succeeded", exit_code=int(ExitCode.OK), finished=_now())
    io.write_json_atomic(path, record)


def run_pipeline(build: Callable[[beam.Pipeline], object], beam_args: list[str] | None = None) -> None:
    """Build a pipeline with ``build(p)``, run it with ``beam_args`` (runner and its options) and
    wait for it; an unsuccessful end is an error."""
    options = PipelineOptions(beam_args or [])
    log.info("running the Beam pipeline (runner: %s)", options.get_all_options().get("runner") or "DirectRunner")
    p = beam.Pipeline(options=options)
    build(p)
    result = p.run()
    try:
        state = result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # the DaskRunner leaves its client open
        if client is not None:
            client.close()
    if state not in ("DONE", None):
        raise RuntimeError(f"the Beam pipeline ended in state {state}")


class _WriteStatsFn(beam.DoFn):
    """Writes one statistics file: its entries in a canonical order (any runner, same bytes)."""

    def __init__(self, output: str):
        self.output = output

    def process(self, item):
        name, entries = item
        io.write_json_atomic(io.join(self.output, STATS_DIR, f"{name}.json"), sorted(entries, key=json.dumps))
        yield name


def collect_stats(name: str, pcoll, output: str):
    """Gather a small PCollection into ``OUTPUT/_stats/<name>.json`` (no file when it is empty)."""
    return (
        pcoll
        | f"Key{name}" >> beam.Map(lambda x: (name, x))
        | f"Gather{name}" >> beam.GroupByKey()
        | f"Write{name}" >> beam.ParDo(_WriteStatsFn(output))
    )


def read_stats(output: str, name: str) -> list:
    """The entries of one statistic written by :func:`collect_stats` ([] when there were none)."""
    path = io.join(output, STATS_DIR, f"{name}.json")
    return io.read_json(path) if io.exists(path) else []


def remove_stats(output: str) -> None:
    io.remove_tree(io.join(output, STATS_DIR))
