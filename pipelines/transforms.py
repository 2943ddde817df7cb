"""The corpus pipeline's steps as public Beam ``PTransform``s: what ``gristmill corpus`` runs, to
compose into your own pipelines.

In a row they make a corpus pipeline::

    files | ReadClean(cfg, work_dir)                 # every document, dropped ones with a reason (per file
                                                     # resumable; or ReadFiles(cfg.read) | Clean(cfg))
    kept  | ExactDedup()                             # duplicates marked exact_dedup:duplicate
    kept  | NearDedupEdges(cfg.near_dedup, spill)    # near-dedup, step 1 of 3 (pipelines/near_dedup.py):
    clustering = cluster(spill, cfg.near_dedup)      #   2, between pipelines: the rounds until converged
    p | MarkNearDuplicates(clustering)               #   3: the documents, near duplicates marked
    kept  | WriteShards(output, cfg.write)           # Arrow shards OUTPUT/lang=xx/part-NNNNN.arrow

``gristmill corpus`` (:func:`gristmill.pipelines.corpus.build_pipeline`,
:func:`~gristmill.pipelines.corpus.build_write_pipeline`) is these objects with its bookkeeping around
them (statistics, rejected shards, manifest, report); tests/test_extend.py holds the composition above
to its shards, byte for byte.

A document is a dict (:func:`gristmill.documents.new_document`); a step never drops one from the
stream, it sets ``reason`` (``stage:rule``) and the next steps are given only the documents still
kept (``beam.Filter(lambda d: not d["reason"])``), so every document read can be accounted for.
The transforms are thin: the logic lives in pure functions (readers, filters, dedupe).
"""

from __future__ import annotations

import hashlib
import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from gristmill.config import GristmillConfig, ReadConfig, WriteConfig
from gristmill.dedupe.components import is_published, node_id, node_key
from gristmill.documents import dropped, write_shard
from gristmill.pipelines.clean import Cleaner
from gristmill.pipelines.filters import dedup_key
from gristmill.pipelines.near_dedup import Clustering, MarkNearDuplicates, NearDedupEdges, cluster, near_dedup
from gristmill.pipelines.readers import FileStats, read_file

__all__ = ["Clean", "Clustering", "ExactDedup", "MarkNearDuplicates", "NearDedupEdges", "ReadClean", "ReadFiles",
           "UniqueIds", "WriteShards", "cluster", "near_dedup", "text_hash"]

log = logging.getLogger("gristmill.corpus")

FILE_STATS = "__file_stats__"
#: the Beam metrics namespace of :class:`Clean`'s per-step counters (``<step>.documents``, ``.dropped``,
#: ``.microseconds``); ``gristmill corpus`` records the same in manifest.json and run.json
CLEAN_STEP_METRICS = "gristmill.clean_steps"


# ---------------------------------------------------------------------------------------------
# Read
# ---------------------------------------------------------------------------------------------


class _ReadFileFn(beam.DoFn):
    """Documents of one input file, then one ``{FILE_STATS: {...}}`` element.

    One output stream split by ``beam.Filter`` rather than tagged outputs: the DaskRunner (and
    other young runners) do not separate tagged outputs, and this costs nothing measurable.
    """

    def __init__(self, read_cfg: ReadConfig):
        self.read_cfg = read_cfg
        self.docs_read = Metrics.counter("gristmill", "documents_read")

    def process(self, item):
        path, source = (item, item.rsplit("/", 1)[-1]) if isinstance(item, str) else item
        for out in read_file(path, source, self.read_cfg):
            if isinstance(out, FileStats):
                log.info("read %s: %d documents%s", source, out.documents, f" ({out.error})" if out.error else "")
                yield {FILE_STATS: out.to_json()}
            else:
                self.docs_read.inc()
                yield out


class ReadFiles(beam.PTransform):
    """File paths, or (path, source label) pairs → documents (WARC/WET, JSONL, Parquet; the format
    from the file name). A record that cannot be a document comes out dropped with its reason
    (``read:...``, ``extract:...``). With ``with_file_stats=True`` the output is ``(documents,
    file_stats)``, one dict per file (size, SHA-256, documents, error: see ``readers.FileStats``).
    A path alone gets its file name as source label."""

    def __init__(self, read_cfg: ReadConfig | None = None, with_file_stats: bool = False):
        super().__init__()
        self.read_cfg, self.with_file_stats = read_cfg or ReadConfig(), with_file_stats

    def expand(self, files):
        read = files | "SpreadFiles" >> beam.Reshuffle() | "Read" >> beam.ParDo(_ReadFileFn(self.read_cfg))
        docs = read | "Docs" >> beam.Filter(lambda x: FILE_STATS not in x)
        if not self.with_file_stats:
            return docs
        stats = read | "FileStats" >> beam.Map(lambda x: x.get(FILE_STATS)) | "OnlyStats" >> beam.Filter(bool)
        return docs, stats


class ReadClean(beam.PTransform):
    """``ReadFiles | Clean`` fused per file, resumable: file paths (or (path, source) pairs) → every document read
    and cleaned, as those two give them, with each file's cleaned documents kept under ``work_dir`` so that a run
    started again after a crash reuses every file it finished (pipelines/resume.py; on the in-process runner,
    ``pool_workers`` forked processes do the files). What ``gristmill corpus`` and ``refresh`` read with. Returns
    ``(documents, file_stats)`` like ``ReadFiles(with_file_stats=True)``; kept documents also carry their
    exact-dedup hash and, with ``cfg.near_dedup`` on, their MinHash signature (computed where the work is spread)."""

    def __init__(self, cfg: GristmillConfig, work_dir: str, pool_workers: int = 1):
        super().__init__()
        self.cfg, self.work_dir, self.pool_workers = cfg, work_dir, pool_workers

    def expand(self, files):
        from gristmill.pipelines.resume import ReadCleanFileFn  # it uses this module's text hash

        read = (files | "SpreadFiles" >> beam.Reshuffle()
                | "ReadClean" >> beam.ParDo(ReadCleanFileFn(self.cfg, self.work_dir, FILE_STATS, self.pool_workers)))
        docs = read | "Docs" >> beam.Filter(lambda x: FILE_STATS not in x)
        stats = read | "FileStats" >> beam.Map(lambda x: x.get(FILE_STATS)) | "OnlyStats" >> beam.Filter(bool)
        return docs, stats


# ---------------------------------------------------------------------------------------------
# Clean
# ---------------------------------------------------------------------------------------------


class _CleanFn(beam.DoFn):
    def __init__(self, cfg: GristmillConfig):
        self.cfg = cfg
        self.cleaner = None

    def __getstate__(self):
        # the fastText model cannot be pickled; some runners re-serialise DoFns after setup()
        return {**self.__dict__, "cleaner": None}

    def setup(self):
        self.cleaner = Cleaner(self.cfg)

    def process(self, doc):
        # never mutate an input element: runners may share it with other consumers (Dask does)
        doc = self.cleaner.process({**doc, "signals": dict(doc["signals"])})
        # per-reason counters show the funnel live in the runner's UI (Dataflow, Flink)
        Metrics.counter("gristmill", doc["reason"] or "kept").inc()
        yield doc

    def finish_bundle(self):
        # each clean step's documents, drops and time as counters (the runner's UI, ``result.metrics()``)
        for step, (n, n_dropped, seconds) in self.cleaner.take_steps().items():
            Metrics.counter(CLEAN_STEP_METRICS, f"{step}.documents").inc(n)
            Metrics.counter(CLEAN_STEP_METRICS, f"{step}.dropped").inc(n_dropped)
            Metrics.counter(CLEAN_STEP_METRICS, f"{step}.microseconds").inc(round(seconds * 1e6))


class Clean(beam.PTransform):
    """Documents → cleaned documents (normalisation, URL blocklist, language ID, Gopher, C4, your
    own filters, PII redaction: :class:`~gristmill.pipelines.clean.Cleaner`), each either rewritten
    and kept or marked dropped with ``reason``. Documents already dropped pass unchanged."""

    def __init__(self, cfg: GristmillConfig | None = None):
        super().__init__()
        self.cfg = cfg or GristmillConfig()

    def expand(self, docs):
        return docs | "Clean" >> beam.ParDo(_CleanFn(self.cfg))


# ---------------------------------------------------------------------------------------------
# Exact dedup
# ---------------------------------------------------------------------------------------------


def text_hash(text: str) -> str:
    """The exact-dedup key: blake2b-128 of the normalised text (:func:`~gristmill.pipelines.filters.dedup_key`)."""
    return hashlib.blake2b(dedup_key(text).encode(), digest_size=16).hexdigest()


def with_text_hash(doc: dict) -> dict:
    """A copy of the document with its exact-dedup key."""
    return {**doc, "text_hash": text_hash(doc["text"])}


def _dedup_keyed(doc: dict):
    return doc.get("text_hash") or text_hash(doc["text"]), doc


RENAME = "\x00rename"  # marks an id change travelling with documents: (RENAME, old id, source, new id)


def _node_of(item) -> str:
    # a document, or the node (a string) of a published document with the same text
    return item if isinstance(item, str) else node_key(item["id"], item["source"])


def _is_rename(item) -> bool:
    return isinstance(item, tuple) and item[0] == RENAME


def renamed(doc: dict, new_id: str) -> dict:
    """A copy of the document under a new id, its input id kept in ``original_id``."""
    return {**doc, "id": new_id, "original_id": doc.get("original_id") or doc["id"]}


def _keep_smallest(item):
    """Of documents with the same normalised text keep the smallest (id, source); mark the rest.
    A published document (refresh) sorts before every new one, so it wins. Id changes for this
    group's documents (see :class:`UniqueIds`) are applied first. Three passes over the group,
    holding only its id changes (rare) and the smallest node (see dedupe/components.py)."""
    _, values = item
    renames = {(r[1], r[2]): r[3] for r in values if _is_rename(r)}

    def final(d):
        new = renames.get((d["id"], d["source"])) if renames else None
        return renamed(d, new) if new else d

    winner = min(_node_of(v if isinstance(v, str) else final(v)) for v in values if not _is_rename(v))
    reason = "exact_dedup:published_duplicate" if is_published(winner) else "exact_dedup:duplicate"
    for v in values:
        if isinstance(v, str) or _is_rename(v):
            continue
        d = final(v)
        if node_key(d["id"], d["source"]) != winner:
            yield dropped(dict(d), reason, node_id(winner))  # a copy: inputs are immutable
        else:
            yield d


class ExactDedup(beam.PTransform):
    """Kept documents → the same documents, all but the smallest (id, source) of each group with
    the same normalised text (NFKC, casefolded, whitespace collapsed) marked
    ``exact_dedup:duplicate`` with the kept id in ``detail``. Uses a document's ``text_hash`` when
    it has one. ``published_hashes``: (text hash, published node) pairs of a published corpus, whose
    documents win (``exact_dedup:published_duplicate``; a refresh). ``renames``: id changes keyed
    by text hash (:class:`UniqueIds` with ``by_text_hash``), applied on the way."""

    def __init__(self, published_hashes=None, renames=None):
        super().__init__()
        self.published_hashes, self.renames = published_hashes, renames

    def expand(self, docs):
        keyed = docs | "DedupKey" >> beam.Map(_dedup_keyed)
        extra = [x for x in (self.published_hashes, self.renames) if x is not None]
        if extra:
            keyed = (keyed, *extra) | "WithPublishedHashesAndRenames" >> beam.Flatten()
        return keyed | "DedupGroup" >> beam.GroupByKey() | "ExactDedupKeep" >> beam.FlatMap(_keep_smallest)


# ---------------------------------------------------------------------------------------------
# Unique ids
# ---------------------------------------------------------------------------------------------


def _id_census_entry(doc: dict):
    return doc["id"], (doc["source"], doc.get("text_hash"))


def _id_changes(item):
    """Documents sharing an id (from different files: within a file the reader made them unique):
    the one from the smallest source keeps it, each other one becomes ``<id>@<source>``. Two
    passes, holding only the smallest source."""
    doc_id, members = item
    first, n = None, 0
    for source, _ in members:
        n += 1
        first = source if first is None or source < first else first
    if n < 2:
        return
    for source, text_key in members:
        if source != first:
            yield text_key, (RENAME, doc_id, source, f"{doc_id}@{source}")


def _by_node(item):
    _, rename = item
    return node_key(rename[1], rename[2]), rename


def _apply_renames(item):
    _, joined = item
    new = next((r[3] for r in joined["renames"]), None)
    for doc in joined["docs"]:
        yield renamed(doc, new) if new else doc


class UniqueIds(beam.PTransform):
    """Kept documents → the id changes that make their ids unique across the whole run (an id used
    in two input files for different documents; within a file the reader already made ids unique):
    ``(text hash, (RENAME, id, source, new id))``. Hand them to :class:`ExactDedup`, which applies
    them in the groups it forms anyway, or to :func:`apply_id_changes` (a join of its own)."""

    def expand(self, docs):
        return (
            docs
            | "IdCensus" >> beam.Map(_id_census_entry)
            | "IdGroups" >> beam.GroupByKey()
            | "IdChanges" >> beam.FlatMap(_id_changes)
        )


def apply_id_changes(docs, changes, label: str = "ApplyIdChanges"):
    """The documents with :class:`UniqueIds`' changes applied (when no exact dedup carries them)."""
    return (
        {"docs": docs | f"{label}DocsByNode" >> beam.Map(lambda d: (node_key(d["id"], d["source"]), d)),
         "renames": changes | f"{label}ByNode" >> beam.Map(_by_node)}
        | f"{label}Join" >> beam.CoGroupByKey()
        | f"{label}Apply" >> beam.FlatMap(_apply_renames)
    )


# ---------------------------------------------------------------------------------------------
# Write
# ---------------------------------------------------------------------------------------------


def shard_count(n_docs: int, n_bytes: int, max_docs: int, max_bytes: int) -> int:
    return max(1, -(-n_docs // max_docs), -(-n_bytes // max_bytes))


def shard_index(doc_id: str, source: str, n_shards: int) -> int:
    """Stable (not Python's salted hash) assignment of a document to one of n shards."""
    if n_shards == 1:
        return 0
    h = hashlib.blake2b(f"{doc_id}\x00{source}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % n_shards


#: buckets per partition in the size join (see WriteShards); any value gives the same shards
SIZE_JOIN_BUCKETS = 64


def _bucket(doc) -> int:
    return shard_index(doc["id"], doc["source"], SIZE_JOIN_BUCKETS)


def _fan_out_sizes(item):
    part, size = item
    for b in range(SIZE_JOIN_BUCKETS):
        yield (part, b), size


def _sum_pairs(pairs):
    n_docs = n_bytes = 0
    for d, b in pairs:
        n_docs += d
        n_bytes += b
    return n_docs, n_bytes


def _assign_shards(item, max_docs: int, max_bytes: int):
    (part, _), joined = item
    (n_docs, n_bytes), = joined["size"]
    n = shard_count(n_docs, n_bytes, max_docs, max_bytes)
    for doc in joined["docs"]:
        yield (part, shard_index(doc["id"], doc["source"], n)), doc


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str, prefix: str, kind: str, write_cfg: WriteConfig):
        self.output, self.prefix, self.kind, self.write_cfg = output, prefix, kind, write_cfg

    def process(self, item):
        (partition, index), docs = item
        w = self.write_cfg
        info = write_shard(self.output, f"{self.prefix}{partition}", index, list(docs), self.kind, w.arrow_format,
                           w.format, w.parquet_row_group_bytes)
        info["partition"] = partition
        yield info


def text_bytes(doc) -> int:
    return len(doc["text"].encode("utf-8"))


def language(doc) -> str:
    return doc["lang"]


class WriteShards(beam.PTransform):
    """Documents → Arrow shards ``OUTPUT/<prefix><partition>/part-NNNNN.arrow`` (``.parquet`` with
    ``write.format: parquet``), each sorted by id; outputs one manifest entry per shard (path, rows,
    bytes, sha256, partition).

    ``partition_fn`` names a document's partition (its language by default: ``lang=xx/``). A
    partition is split into ``ceil(max(docs / write.max_docs_per_shard, bytes /
    write.max_bytes_per_shard))`` shards by a hash of (id, source), so the same documents always
    give the same files. ``kind``: ``corpus``, ``rejected`` (adds reason and detail) or ``index``.

    The partition totals reach the documents through a join on (partition, bucket), not a side
    input: side inputs are the least portable Beam feature (the DaskRunner cannot evaluate them),
    and the join keeps each group to 1/SIZE_JOIN_BUCKETS of a partition.
    """

    def __init__(self, output: str, write_cfg: WriteConfig | None = None, prefix: str = "lang=",
                 partition_fn=language, kind: str = "corpus", size_fn=text_bytes):
        super().__init__()
        self.output, self.write_cfg, self.prefix = output, write_cfg or WriteConfig(), prefix
        self.partition_fn, self.kind, self.size_fn = partition_fn, kind, size_fn

    def expand(self, docs):
        w, key_fn, size_fn = self.write_cfg, self.partition_fn, self.size_fn
        sizes = (
            docs
            | "Sizes" >> beam.Map(lambda d: (key_fn(d), (1, size_fn(d))))
            | "SumSizes" >> beam.CombinePerKey(_sum_pairs)
            | "FanOut" >> beam.FlatMap(_fan_out_sizes)
        )
        keyed = docs | "KeyBucket" >> beam.Map(lambda d: ((key_fn(d), _bucket(d)), d))
        return (
            {"docs": keyed, "size": sizes}
            | "JoinSizes" >> beam.CoGroupByKey()
            | "Assign" >> beam.FlatMap(_assign_shards, w.max_docs_per_shard, w.max_bytes_per_shard)
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteShardFn(self.output, self.prefix, self.kind, w))
        )
