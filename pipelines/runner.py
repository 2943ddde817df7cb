"""Running a Beam pipeline from the driver, and the small statistics it hands back.

Both Beam pipelines of gristmill (``corpus``/``refresh`` and ``tokenize``) run through
:func:`run_pipeline` and report what the driver needs to write their manifest through
:func:`collect_stats`: each named statistic is gathered into one JSON file under
``OUTPUT/_stats/`` by the job and read back by :func:`read_stats` once it has finished. The files
are small (one entry per input file, shard or counter key), so the driver's work stays bounded
whatever the size of the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from gristmill import io
from gristmill.errors import GristmillError

log = logging.getLogger("gristmill.beam")

STATS_DIR = "_stats"
class RunnerError(GristmillError):
    """``--runner`` names no runner Beam can load (a usage error, found before anything is written)."""


#: runners outside Beam's short names that users name by their class name
_RUNNER_PATHS = {"daskrunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}


def check_runner(beam_args: list[str] | None) -> None:
    """Refuse (:class:`RunnerError`, exit 2) a ``--runner`` Beam cannot load, before a run creates
    its lock, marker or run.json; the message lists the runners Beam knows by name."""
    import importlib

    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.runner import _RUNNER_MAP

    name = PipelineOptions(list(beam_args or [])).view_as(StandardOptions).runner
    if not name or not isinstance(name, str):
        return
    key = name.lower()
    path = _RUNNER_MAP.get(key) or _RUNNER_MAP.get(key + "runner") or name
    if "." not in path:
        known = sorted({p.rsplit(".", 1)[1] for p in _RUNNER_MAP.values()})
        full = _RUNNER_PATHS.get(key) or _RUNNER_PATHS.get(key + "runner")
        hint = f"give its full class path: --runner {full}" if full else (
            f"use one of {', '.join(known)}, or a runner's full class path (module.Class)")
        raise RunnerError(f"--runner {name}: Beam has no runner of that name; {hint}")
    module, cls = path.rsplit(".", 1)
    try:
        getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise RunnerError(f"--runner {name}: cannot load {path} ({type(e).__name__}: {e}); is its Beam extra "
                          "installed?") from None


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
