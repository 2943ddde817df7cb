"""Every core of one machine for the per-file work, on Beam's default in-process runner.

The heavy part of ``corpus``/``refresh`` (read, extract, clean, language ID: milliseconds per
document) and of ``tokenize`` (encode) is per input file, and both already keep each file's result
in a work file so that a crashed run can resume (pipelines/resume.py, EncodeShardFn). On the
default runner gristmill does that per-file work in a pool of forked processes, one per core, and
the Beam step then *replays* each finished work file, exactly as a resumed run does: the same
elements, so the output is byte-identical to a one-process run, and the global steps (shuffles,
dedup, writing: light per document) stay in the runner's process.

Why not Beam's own ``--direct_running_mode multi_processing``: it starts a fresh Python worker per
core for every pipeline (6–7 s here), sends every element of every stage through gRPC, and its
driver still does the shuffles itself. A fork costs milliseconds and moves only file names.

The pool is used only where it is the right tool: the runner is the local in-process one (no
``--runner``, ``DirectRunner`` or ``FnApiRunner``) and its mode is not ``multi_processing``. Its
size is ``--direct_num_workers`` (0 or unset: every core this process may use); ``1`` turns it
off. Any other runner (Dataflow, Flink, Spark, Dask) parallelises over its own workers and gets
plain DoFns.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.transforms.window import GlobalWindows

log = logging.getLogger("gristmill.beam")

_LOCAL_RUNNERS = {"", "directrunner", "fnapirunner", "switchingdirectrunner"}


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset`` limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_local_workers(beam_args: list[str] | None) -> tuple[int, list[str]]:
    """(pool size for the per-file work, the Beam arguments to run the pipeline with).

    The pool size is 1 (no pool) unless the runner is the local in-process one; then it is
    ``--direct_num_workers`` (0 or unset: :func:`machine_cores`), and that option is taken out of
    what Beam sees (its in-process runner would otherwise run bundles on threads, which the GIL
    serialises)."""
    args = list(beam_args or [])
    opts = PipelineOptions(args)
    runner = (opts.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1].lower()
    if runner not in _LOCAL_RUNNERS or opts.view_as(DirectOptions).direct_running_mode == "multi_processing":
        return 1, args
    if "fork" not in multiprocessing.get_all_start_methods():  # the children inherit the loaded DoFn
        return 1, args
    named = any(a == "--direct_num_workers" or a.startswith("--direct_num_workers=") for a in args)
    workers = opts.view_as(DirectOptions).direct_num_workers if named else 0
    workers = machine_cores() if workers <= 0 else workers
    return workers, _without_option(args, "direct_num_workers")


def _without_option(args: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == f"--{name}":
            skip = True
            continue
        if a.startswith(f"--{name}="):
            continue
        out.append(a)
    return out


# the DoFn whose work the forked children do: set before the pool forks, inherited by the children
_CHILD_FN: PooledWorkFn | None = None
# the pools of this process that have not been shut down (stop_pools)
_LIVE_POOLS: set[ProcessPoolExecutor] = set()


def stop_pools() -> None:
    """Kill the children of every pool still running and wait until they are gone: a run that is
    failing or being stopped calls this before it removes its temporaries, so that no child writes
    one after (the runner may not tear the DoFns down when it is interrupted)."""
    for pool in list(_LIVE_POOLS):
        children = list((pool._processes or {}).values())
        for child in children:
            child.kill()
        for child in children:
            child.join()
        pool.shutdown(wait=False, cancel_futures=True)
        _LIVE_POOLS.discard(pool)


def _die_with_parent(parent: int) -> None:
    """A child is killed with its parent (Linux): a killed run leaves no process still working (and
    still holding, by the inherited descriptor, the output's lock) behind it."""
    import signal

    # Ctrl-C reaches the whole process group: the run's process decides what happens (it unwinds and
    # ends the pool); a child would only print a KeyboardInterrupt traceback per file
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (gristmill.errors)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _child_work(item):
    return _CHILD_FN.work_to_file(item)


class PooledWorkFn(beam.DoFn):
    """A DoFn whose work per element can be done into a work file and replayed from it.

    Subclasses define :meth:`work_to_file` (do the element's work, leave the result in its work
    file, return a small picklable token) and :meth:`replay` (the element's outputs, from the work
    file and the token); :meth:`process_direct` is the one-process path. With ``pool_workers`` > 1
    each element's work runs in a forked child while the runner's process replays the elements
    already done; outputs may come in any order (gristmill's pipelines never depend on it)."""

    def __init__(self, pool_workers: int = 1):
        self.pool_workers = pool_workers
        self._pool: ProcessPoolExecutor | None = None
        self._pending: list[tuple[object, Future]] = []

    def __getstate__(self):
        return {**self.__dict__, "_pool": None, "_pending": []}

    # --- what a subclass defines ---

    def work_to_file(self, item):
        raise NotImplementedError

    def replay(self, item, token):
        raise NotImplementedError

    def process_direct(self, item):
        token = self.work_to_file(item)
        yield from self.replay(item, token)

    # --- Beam ---

    def start_bundle(self):
        self._pool, self._pending = None, []

    def process(self, item):
        if self.pool_workers <= 1:
            yield from self.process_direct(item)
            return
        if self._pool is None:
            global _CHILD_FN
            _CHILD_FN = self
            # fork: the children start in milliseconds with the parent's loaded models (fastText,
            # SentencePiece); spawn would import and load everything again in each
            self._pool = ProcessPoolExecutor(self.pool_workers, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_die_with_parent, initargs=(os.getpid(),))
            _LIVE_POOLS.add(self._pool)
        self._pending.append((item, self._pool.submit(_child_work, item)))
        yield from self._done(block=False)

    def finish_bundle(self):
        finished = False
        try:
            while self._pending:
                for out in self._done(block=True):
                    yield GlobalWindows.windowed_value(out)
            finished = True
        finally:
            self._shutdown(kill=not finished)

    def teardown(self):
        # a pool still here was not ended by finish_bundle: the run is failing or being stopped; its
        # children are killed, not waited for (a child may be an hour into a large file)
        self._shutdown(kill=True)

    def _done(self, block: bool):
        """The outputs of the elements whose work has finished (waiting for at least one if ``block``)."""
        if block:  # in short waits: a signal the kernel gives a helper thread is handled between two of them
            while not wait([f for _, f in self._pending], timeout=0.2, return_when=FIRST_COMPLETED).done:
                pass
        ready, pending = [], []
        for entry in self._pending:  # one look at each future: it may finish between two
            (ready if entry[1].done() else pending).append(entry)
        self._pending = pending
        for item, f in ready:
            yield from self.replay(item, f.result())  # a child's exception is raised here

    def _shutdown(self, kill: bool = False):
        if self._pool is not None:
            if kill:
                for child in list((self._pool._processes or {}).values()):
                    child.kill()
            self._pool.shutdown(wait=not kill, cancel_futures=True)
            _LIVE_POOLS.discard(self._pool)
            self._pool = None
