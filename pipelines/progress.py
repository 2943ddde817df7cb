"""Progress of a corpus run, watched from the driver while the Beam pipeline runs.

Beam's in-process and multi-process runners report metrics only when a pipeline ends, so the
workers leave their progress where the driver can read it, on any runner whose workers share the
output's file system: the per-file work of pipelines/resume.py. A finished input file has its
``_work/<name>.json`` (documents, size); a file being read has ``_work/<name>.progress``, rewritten
at most once a second with the documents done so far. The driver polls these (:class:`CorpusProgress`)
and shows files and documents done of the total, documents/s and an ETA by input bytes, then one
line per phase: read and clean, deduplication, writing. On a terminal that is a progress bar; in a
log (cron, CI, a cluster) only the phase lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time

from gristmill import io
from gristmill.format import duration

log = logging.getLogger("gristmill.corpus")

PROGRESS_SUFFIX = ".progress"
#: the least time between two progress writes of one worker's file
WRITE_EVERY_S = 1.0
#: without a bar (a log, not a terminal): one progress line this often while reading
LOG_EVERY_S = 60.0
# what the driver's poll ignores when it looks for the first written shard
_NOT_SHARDS = ("_work", "_spill", "_stats", "_rejected")


class FileProgress:
    """Worker side: the documents read so far from one input file, written at most once a second."""

    def __init__(self, path: str):
        self.path, self.documents, self._last = path, 0, time.monotonic()

    def add(self) -> None:
        self.documents += 1
        now = time.monotonic()
        if now - self._last >= WRITE_EVERY_S:
            self._last = now
            try:
                io.write_json_atomic(self.path, {"documents": self.documents})
            except OSError:  # progress is never worth failing a file for
                pass


class CorpusProgress:
    """Driver side: a thread that polls ``OUTPUT/_work`` while the pipeline runs (local outputs only:
    a remote runner has its own monitoring)."""

    def __init__(self, output: str, total_files: int, total_bytes: int, bar: bool, interval: float = 1.0,
                 lines: bool = True):
        self.lines = lines  # without a bar: a progress line every LOG_EVERY_S (off: --no-progress)
        self.output, self.work_dir = output, os.path.join(output, "_work")
        self.total_files, self.total_bytes, self.interval = total_files, max(1, total_bytes), interval
        self.enabled = not io.is_remote(output)
        self.show_bar = bar and self.enabled
        self.done: dict[str, dict] = {}  # work name → its finished file's stats
        self.start = time.monotonic()
        self.read_done_at: float | None = None
        self.write_started_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._last_line = time.monotonic()
        self._phases = False  # the driver tells the phases after reading (read_finished, phase)
        self._phase_started: float | None = None

    # --- reading the workers' files ---

    def _poll(self) -> tuple[int, int, int]:
        """(files done, documents done, estimated input bytes done)."""
        in_flight = 0
        try:
            names = os.listdir(self.work_dir)
        except OSError:
            names = []
        for n in names:
            if n.endswith(".json") and n[:-5] not in self.done:
                try:
                    with open(os.path.join(self.work_dir, n)) as f:
                        self.done[n[:-5]] = json.load(f)["stats"]
                except (OSError, ValueError, KeyError):
                    pass  # being written: the next poll reads it
        for n in names:
            if n.endswith(PROGRESS_SUFFIX) and n[: -len(PROGRESS_SUFFIX)] not in self.done:
                try:
                    with open(os.path.join(self.work_dir, n)) as f:
                        in_flight += int(json.load(f)["documents"])
                except (OSError, ValueError, KeyError, TypeError):
                    pass
        docs_done = sum(s.get("documents", 0) for s in self.done.values())
        bytes_done = sum(s.get("size", 0) for s in self.done.values())
        # a file being read counts by its documents at the average size per document seen so far
        estimate = bytes_done + (in_flight * bytes_done / docs_done if docs_done else 0)
        # files of unlike documents make that estimate overshoot: never 100 % before the last file is done
        cap = self.total_bytes if len(self.done) >= self.total_files else int(self.total_bytes * 0.99)
        return len(self.done), docs_done + in_flight, int(min(estimate, cap))

    def _shards_started(self) -> bool:
        try:
            entries = list(os.scandir(self.output))
        except OSError:
            return False
        for e in entries:
            if e.is_dir() and e.name not in _NOT_SHARDS:
                try:
                    if any(f.is_file() and f.stat().st_mtime >= self._wall_start for f in os.scandir(e.path)):
                        return True
                except OSError:
                    continue
        return False

    # --- the thread ---

    def __enter__(self) -> CorpusProgress:
        if not self.enabled:
            return self
        self._wall_start = time.time() - 1.0
        # progress files of a crashed earlier run would count as documents in flight
        for n in os.listdir(self.work_dir) if os.path.isdir(self.work_dir) else []:
            if n.endswith(PROGRESS_SUFFIX):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.work_dir, n))
        if self.show_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_bytes, unit="B", unit_scale=True, desc="read + clean", leave=False,
                             dynamic_ncols=True)
        log.info("read + clean: %d input files", self.total_files)
        self._thread = threading.Thread(target=self._run, name="gristmill-progress", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()

    def update(self) -> None:
        files, docs, done_bytes = self._poll()
        elapsed = time.monotonic() - self.start
        rate = docs / elapsed if elapsed else 0.0
        if self._bar is not None and self.read_done_at is None:
            self._bar.n = max(self._bar.n, done_bytes)
            self._bar.set_postfix_str(f"files {files}/{self.total_files}, {docs:,} docs, {rate:,.0f} docs/s",
                                      refresh=True)
        elif self.lines and self.read_done_at is None and time.monotonic() - self._last_line >= LOG_EVERY_S:
            self._last_line = time.monotonic()
            eta = elapsed * (self.total_bytes - done_bytes) / done_bytes if done_bytes else None
            log.info("read + clean: %d/%d files, %s documents, %s documents/s, ETA %s", files, self.total_files,
                     f"{docs:,}", f"{rate:,.0f}", duration(eta) if eta is not None else "unknown yet")
        if self.read_done_at is None and files >= self.total_files:
            self.read_done_at = time.monotonic()
            if self._bar is not None:
                self._bar.close()
            log.info("read + clean: %d files, %s documents in %.1f s (%s documents/s); deduplicating",
                     files, f"{docs:,}", elapsed, f"{docs / elapsed if elapsed else 0:,.0f}")
        if (self.read_done_at is not None and self.write_started_at is None and not self._phases
                and self._shards_started()):
            self.write_started_at = time.monotonic()
            log.info("dedup: %.1f s; writing shards", self.write_started_at - self.read_done_at)

    # --- phases the driver knows of (a run of several pipelines: near-dedup's clustering rounds) ---

    def read_finished(self) -> None:
        """The first pipeline has ended: every file is read; what follows is clustering."""
        if not self.enabled:
            return
        self._phases = True
        self.update()  # the read line, if the poll has not written it yet
        now = time.monotonic()
        log.info("dedup: %.1f s (exact duplicates, signatures, candidate pairs); clustering",
                 now - (self.read_done_at or now))
        self._phase_started = now

    def phase(self, name: str) -> None:
        """The clustering has ended; ``name`` (writing shards) begins."""
        if not self.enabled:
            return
        now = time.monotonic()
        log.info("clustering: %.1f s; %s", now - (self._phase_started or now), name)
        self.write_started_at = now

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc[0] is None:
            self.update()
            end = time.monotonic()
            if self.write_started_at is not None:
                log.info("write: %.1f s", end - self.write_started_at)
            elif self.read_done_at is not None:
                log.info("dedup + write: %.1f s", end - self.read_done_at)
        if self._bar is not None:
            self._bar.close()
