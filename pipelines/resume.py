"""Resuming a crashed corpus run: the work already done for each input file is kept and reused.

Reading, extraction and cleaning are per file and most of a run's time. While a run works, each
input file's cleaned documents (kept and dropped, exactly as the next steps receive them) go to a
work file ``OUTPUT/_work/<name>.arrow``, and once the file is done, its statistics and checksum to
``<name>.json``, written last. A run started again after a crash (SIGKILL, a lost machine) reuses
every file whose work is complete, made with the same config and gristmill version, and whose
input still has the same size and SHA-256 (hashing a file is one quick pass: far cheaper than
extracting and cleaning it); it redoes the rest. Deduplication and writing are global and run
again in full. The finished output is byte-identical to an uninterrupted run's; ``_work/`` is then
removed. ``--fresh`` (``run_corpus(fresh=True)``) ignores earlier work.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pyarrow as pa
from apache_beam.metrics import Metrics

from gristmill import __version__, io
from gristmill.config import GristmillConfig
from gristmill.dedupe.beam import sign
from gristmill.dedupe.minhash import lsh_params
from gristmill.documents import SCHEMA_VERSION, pack_document, unpack_document
from gristmill.pipelines.clean import Cleaner
from gristmill.pipelines.progress import PROGRESS_SUFFIX, FileProgress
from gristmill.pipelines.readers import FileStats, read_file
from gristmill.pipelines.transforms import with_text_hash
from gristmill.pipelines.workpool import PooledWorkFn

log = logging.getLogger("gristmill.corpus")

WORK_DIR = "_work"
#: how documents are stored in a work file (pickles in LZ4-compressed batches; was zlib per document)
WORK_FORMAT = 2
#: documents per record batch of a work file
BATCH = 1000
_WORK_SCHEMA = pa.schema([pa.field("doc", pa.binary())])


def work_fingerprint(cfg: GristmillConfig) -> str:
    """What per-file work depends on: the reading and cleaning config, the near-dedup signature's
    parameters, the document schema and the code's version (a newer gristmill may clean differently)."""
    parts = {k: cfg.model_dump(mode="json")[k] for k in ("read", "langid", "clean", "near_dedup")}
    blob = json.dumps([parts, SCHEMA_VERSION, __version__, WORK_FORMAT], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _file_sha256(path: str) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with io.filesystems().open(path, compression_type="uncompressed") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


class ReadCleanFileFn(PooledWorkFn):
    """One input file → its cleaned documents, then one ``{stats_key: FileStats}`` element; the
    documents also go to the file's work file (or come from it, when an earlier run did the work).
    With ``pool_workers`` > 1 the files are read and cleaned in forked children, one per worker,
    and their documents replayed from the work files (pipelines/workpool.py)."""

    def __init__(self, cfg: GristmillConfig, work_dir: str, stats_key: str, pool_workers: int = 1):
        super().__init__(pool_workers)
        self.cfg, self.work_dir, self.stats_key = cfg, work_dir, stats_key
        self.fingerprint = work_fingerprint(cfg)
        self.lsh = lsh_params(cfg.near_dedup) if cfg.near_dedup.enabled else None  # (bands, rows), once
        self.cleaner = None
        self.reused = Metrics.counter("gristmill", "input_files_reused")

    def __getstate__(self):
        return {**super().__getstate__(), "cleaner": None}  # the fastText model cannot be pickled

    def setup(self):
        self.cleaner = Cleaner(self.cfg)

    def _prepare_kept(self, doc: dict) -> dict:
        """What the global steps need of a kept document, computed here, where the work is spread
        over every worker: its exact-dedup key and (near-dedup on) its MinHash signature."""
        doc = with_text_hash(doc)
        nd = self.cfg.near_dedup
        if self.lsh is not None:
            doc = sign(doc, nd.ngram, nd.num_perm, nd.seed, *self.lsh)
        return doc

    def _paths(self, item) -> tuple[str, str, str, str]:
        path, source = item
        name = hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
        return path, source, io.join(self.work_dir, f"{name}.arrow"), io.join(self.work_dir, f"{name}.json")

    def process_direct(self, item):
        path, source, docs_path, meta_path = self._paths(item)
        meta = self._reusable(path, meta_path)
        if meta is not None:
            yield from self.replay(item, (meta, True))
            return
        yield from self._read_and_clean(path, source, docs_path, meta_path)

    def work_to_file(self, item):
        """(the file's work record, whether an earlier run did it): the work file is complete."""
        path, source, docs_path, meta_path = self._paths(item)
        meta = self._reusable(path, meta_path)
        if meta is not None:
            return meta, True
        for _ in self._read_and_clean(path, source, docs_path, meta_path):
            pass
        return io.read_json(meta_path), False

    def replay(self, item, token):
        meta, reused = token
        _, source, docs_path, _ = self._paths(item)
        if reused:
            log.info("%s: reusing the cleaned documents of an earlier run (%d)", source, meta["stats"]["documents"])
            self.reused.inc()
        for batch in io.iter_batches(docs_path):
            for packed in batch.column("doc").to_pylist():
                yield unpack_document(packed)
        yield {self.stats_key: meta["stats"]}

    def _reusable(self, path: str, meta_path: str) -> dict | None:
        if not io.exists(meta_path):
            return None
        try:
            meta = io.read_json(meta_path)
        except ValueError:
            return None
        if meta.get("fingerprint") != self.fingerprint:
            return None
        if "clean_steps" not in meta["stats"]:
            return None  # work of a gristmill that did not time the clean steps: the manifest counts them
        size, sha = _file_sha256(path)
        if (size, sha) != (meta["stats"]["size"], meta["stats"]["sha256"]):
            return None
        return meta

    def _read_and_clean(self, path: str, source: str, docs_path: str, meta_path: str):
        writer = io.ArrowFileWriter(docs_path, _WORK_SCHEMA, BATCH, io.WORK_COMPRESSION)
        progress = FileProgress(meta_path[: -len(".json")] + PROGRESS_SUFFIX)  # what the driver shows
        self.cleaner.take_steps()  # this file's clean steps (documents, dropped, seconds) go to its stats
        for out in read_file(path, source, self.cfg.read):
            if isinstance(out, FileStats):
                if out.error:  # the documents before the break are kept
                    log.warning("read %s: %d documents, then %s", source, out.documents, out.error)
                else:  # the driver shows the totals (pipelines/progress.py)
                    log.debug("read %s: %d documents", source, out.documents)
                writer.close()
                stats = out.to_json()
                stats["clean_steps"] = self.cleaner.take_steps()
                io.write_json_atomic(meta_path, {"fingerprint": self.fingerprint, "stats": stats})
                yield {self.stats_key: stats}
            else:
                # never mutate an input element: runners may share it with other consumers (Dask does)
                doc = self.cleaner.process({**out, "signals": dict(out["signals"])})
                if not doc["reason"]:
                    doc = self._prepare_kept(doc)
                Metrics.counter("gristmill", doc["reason"] or "kept").inc()
                writer.add({"doc": pack_document(doc)})
                progress.add()
                yield doc
