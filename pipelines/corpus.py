"""The ``corpus`` pipeline: crawl files → clean, language-partitioned Arrow shards + manifest.

Driver side (bounded, documented): expand the input globs, probe each file's first bytes (a thread
pool, ``read.probe_bytes`` per file), and after the Beam job finalise the manifest from the small
per-run statistics the job wrote (one entry per input file, shard and drop reason).

Beam side (scales with the runner): read files in parallel → clean + language ID per document →
exact dedup (GroupByKey on the hash of the normalised text) → hash-partition each language into
shards sized from its document and byte counts → write each shard sorted by id. Nothing depends on
arrival order, so any runner and any number of workers produce the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from dedupe.beam import near_dedup
from dedupe.components import is_published, node_id, node_key
from dedupe.minhash import SCHEME as MINHASH_SCHEME
from pipelines import __version__, shards
from pipelines.clean import STAGES, Cleaner
from pipelines.config import GristmillConfig, ReadConfig
from pipelines.documents import CORPUS_SCHEMA, SCHEMA_VERSION, dropped, sort_key
from pipelines.filters import dedup_key
from pipelines.readers import FileStats, probe, read_file
from pipelines.refresh_index import PublishedCorpus, read_index_rows

log = logging.getLogger("gristmill.corpus")

STATS_DIR = "_stats"
SPILL_DIR = "_spill"  # documents waiting for their near-dedup clusters; removed after the run
FILE_STATS = "__file_stats__"


class PipelineInputError(Exception):
    """Inputs that cannot be used; the message lists each file and its problem."""


class OutputDirError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Driver: inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class InputPlan:
    files: list[tuple[str, str]] = field(default_factory=list)  # (path, source label)
    sizes: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)  # unreadable files, with --skip-bad-files
    duplicates: list[str] = field(default_factory=list)  # the same file named twice
    empty: list[str] = field(default_factory=list)


def _common_dir(paths: list[str]) -> str:
    dirs = [p.rsplit("/", 1)[0] + "/" if "/" in p else "" for p in paths]
    prefix = os.path.commonprefix(dirs)
    return prefix[: prefix.rfind("/") + 1]


def plan_inputs(patterns: list[str], read_cfg: ReadConfig, skip_bad_files: bool = False, progress: bool = True) -> InputPlan:
    paths: list[str] = []
    for pattern in patterns:
        local = "://" not in pattern
        pat = os.path.abspath(pattern) if local else pattern
        try:
            matched = FileSystems.match([pat])[0].metadata_list
        except Exception as e:  # noqa: BLE001
            raise PipelineInputError(f"input {pattern!r}: cannot list: {e}") from e
        found = sorted(m.path for m in matched if not (local and os.path.isdir(m.path)))
        if not found:
            raise PipelineInputError(f"input {pattern!r} matches no file")
        paths.extend(found)

    plan = InputPlan()
    seen: set[str] = set()
    unique: list[str] = []
    for p in paths:
        key = os.path.realpath(p) if "://" not in p else p
        if key in seen:
            plan.duplicates.append(p)
        else:
            seen.add(key)
            unique.append(p)
    unique.sort()
    root = _common_dir(unique)

    def _probe(p: str):
        return p, probe(p, read_cfg)

    results = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        it = pool.map(_probe, unique)
        if progress and len(unique) > 20:
            from tqdm import tqdm

            it = tqdm(it, total=len(unique), desc="probing inputs", unit="file")
        results = list(it)

    problems = []
    for p, (size, problem) in results:
        if problem:
            problems.append({"path": p, "problem": problem})
            continue
        if size == 0:
            plan.empty.append(p)
        plan.files.append((p, p[len(root):]))
        plan.sizes[p] = size
    if problems:
        if not skip_bad_files:
            listing = "\n".join(f"  {x['path']}: {x['problem']}" for x in problems)
            raise PipelineInputError(
                f"{len(problems)} input file(s) cannot be read:\n{listing}\n"
                "Fix or remove them, or pass --skip-bad-files to skip them (they are listed in the manifest)."
            )
        for x in problems:
            log.warning("skipping unreadable input %s: %s", x["path"], x["problem"])
        plan.skipped = problems
    if not plan.files:
        raise PipelineInputError("no readable input files")
    return plan


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse to write into a directory that holds something other than a gristmill output."""
    marker = shards.join(output, shards.OUTPUT_MARKER)
    if FileSystems.exists(output) and not FileSystems.exists(marker):
        entries = [m for m in FileSystems.match([shards.join(output, "*")])[0].metadata_list]
        if entries and not overwrite:
            raise OutputDirError(
                f"output directory {output} is not empty and was not written by gristmill; "
                "choose an empty or new directory (or pass --overwrite)"
            )
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    shards.write_bytes_atomic(marker, b"gristmill corpus output\n")


# ---------------------------------------------------------------------------------------------
# Beam transforms (thin: the logic lives in readers / clean / shards)
# ---------------------------------------------------------------------------------------------


class ReadFileFn(beam.DoFn):
    """Documents of one input file, then one ``{FILE_STATS: {...}}`` element.

    One output stream split by ``beam.Filter`` rather than tagged outputs: the DaskRunner (and
    other young runners) do not separate tagged outputs, and this costs nothing measurable.
    """

    def __init__(self, read_cfg: ReadConfig):
        self.read_cfg = read_cfg
        self.docs_read = Metrics.counter("gristmill", "documents_read")

    def process(self, item):
        path, source = item
        for out in read_file(path, source, self.read_cfg):
            if isinstance(out, FileStats):
                log.info("read %s: %d documents%s", source, out.documents, f" ({out.error})" if out.error else "")
                yield {FILE_STATS: out.to_json()}
            else:
                self.docs_read.inc()
                yield out


class CleanFn(beam.DoFn):
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


def _with_text_hash(doc: dict) -> dict:
    """A copy of the document with its exact-dedup key (the hash of its normalised text)."""
    return {**doc, "text_hash": hashlib.blake2b(dedup_key(doc["text"]).encode(), digest_size=16).hexdigest()}


def _node_of(item) -> str:
    # a document, or the node (a string) of a published document with the same text
    return item if isinstance(item, str) else node_key(item["id"], item["source"])


def _keep_smallest(item):
    """Of documents with the same normalised text keep the smallest (id, source); mark the rest.
    A published document (refresh) sorts before every new one, so it wins. Two passes over the
    group, holding only the smallest node (see dedupe/components.py)."""
    _, docs = item
    winner = min(_node_of(d) for d in docs)
    reason = "exact_dedup:published_duplicate" if is_published(winner) else "exact_dedup:duplicate"
    for d in docs:
        if isinstance(d, str):
            continue
        if node_key(d["id"], d["source"]) != winner:
            yield dropped(dict(d), reason, node_id(winner))  # a copy: inputs are immutable
        else:
            yield d


def _count_keys(doc: dict):
    yield "read"
    if doc["reason"]:
        yield "dropped\x00" + doc["reason"]
        if doc["lang"]:
            yield "lang_dropped\x00" + doc["lang"]
    else:
        yield "kept"
        yield "lang_kept\x00" + doc["lang"]
        if (doc.get("cluster_size") or 1) > 1:
            yield "near_dup_clusters"


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str, prefix: str, kind: str, arrow_format: str):
        self.output, self.prefix, self.kind, self.arrow_format = output, prefix, kind, arrow_format

    def process(self, item):
        (partition, index), docs = item
        info = shards.write_shard(
            self.output, f"{self.prefix}{partition}", index, list(docs), self.kind, self.arrow_format
        )
        info["partition"] = partition
        yield info


def _sum_pairs(pairs):
    n_docs = n_bytes = 0
    for d, b in pairs:
        n_docs += d
        n_bytes += b
    return n_docs, n_bytes


#: buckets per partition in the size join (see write_partitioned); any value gives the same shards
SIZE_JOIN_BUCKETS = 64


def _bucket(doc) -> int:
    return shards.shard_index(doc["id"], doc["source"], SIZE_JOIN_BUCKETS)


def _fan_out_sizes(item):
    part, size = item
    for b in range(SIZE_JOIN_BUCKETS):
        yield (part, b), size


def _assign_shards(item, max_docs: int, max_bytes: int):
    (part, _), joined = item
    (n_docs, n_bytes), = joined["size"]
    n = shards.shard_count(n_docs, n_bytes, max_docs, max_bytes)
    for doc in joined["docs"]:
        yield (part, shards.shard_index(doc["id"], doc["source"], n)), doc


def _text_bytes(doc) -> int:
    return len(doc["text"].encode("utf-8"))


def _index_row(doc) -> dict:
    """What an index shard holds of a kept document (documents.INDEX_SCHEMA), and its text size,
    which sizes the index shards as the corpus shards are sized: the text itself stays out of the
    index's groups."""
    return {"id": doc["id"], "source": doc["source"], "text_hash": doc["text_hash"], "_sig": doc["_sig"],
            "_band_keys": doc["_band_keys"], "text_bytes": _text_bytes(doc)}


def write_partitioned(docs, label: str, key_fn, output: str, prefix: str, kind: str, cfg: GristmillConfig,
                      size_fn=_text_bytes):
    """Hash-partition ``docs`` by ``key_fn`` into shards sized from each partition's totals (documents
    and ``size_fn`` bytes) and write them; returns the shard entries.

    The totals reach the documents through a join on (partition, bucket), not a side input: side
    inputs are the least portable Beam feature (the DaskRunner cannot evaluate them), and the join
    keeps each group to 1/SIZE_JOIN_BUCKETS of a partition.
    """
    w = cfg.write
    sizes = (
        docs
        | f"{label}Sizes" >> beam.Map(lambda d: (key_fn(d), (1, size_fn(d))))
        | f"{label}SumSizes" >> beam.CombinePerKey(_sum_pairs)
        | f"{label}FanOut" >> beam.FlatMap(_fan_out_sizes)
    )
    keyed = docs | f"{label}KeyBucket" >> beam.Map(lambda d: ((key_fn(d), _bucket(d)), d))
    return (
        {"docs": keyed, "size": sizes}
        | f"{label}JoinSizes" >> beam.CoGroupByKey()
        | f"{label}Assign" >> beam.FlatMap(_assign_shards, w.max_docs_per_shard, w.max_bytes_per_shard)
        | f"{label}Group" >> beam.GroupByKey()
        | f"{label}Write" >> beam.ParDo(_WriteShardFn(output, prefix, kind, w.arrow_format))
    )


def _lang_of(d):
    return d["lang"]


def _no_partition(d):
    return ""


def _stage_of(d):
    return d["reason"].split(":", 1)[0]


class _WriteStatsFn(beam.DoFn):
    """Writes one small statistics file (one entry per input file, shard or counter key)."""

    def __init__(self, output: str):
        self.output = output

    def process(self, item):
        name, entries = item
        shards.write_json_atomic(shards.join(self.output, STATS_DIR, f"{name}.json"), sorted(entries, key=json.dumps))
        yield name


def collect_stats(name: str, pcoll, output: str):
    """Gather a small PCollection into ``_stats/<name>.json`` (no file when it is empty)."""
    return (
        pcoll
        | f"Key{name}" >> beam.Map(lambda x: (name, x))
        | f"Gather{name}" >> beam.GroupByKey()
        | f"Write{name}" >> beam.ParDo(_WriteStatsFn(output))
    )


def build_pipeline(
    p: beam.Pipeline, plan: InputPlan, output: str, cfg: GristmillConfig, published_index: list[str] | None = None
) -> None:
    """The corpus pipeline; with ``published_index`` (the index files of a published corpus), new
    documents are also deduplicated against that corpus (``gristmill refresh``)."""
    published = None
    if published_index:
        published = (
            p
            | "PublishedIndexFiles" >> beam.Create(sorted(published_index))
            | "SpreadIndexFiles" >> beam.Reshuffle()
            | "ReadPublishedIndex" >> beam.FlatMap(read_index_rows)
        )
    read = (
        p
        | "Inputs" >> beam.Create(plan.files)
        | "SpreadFiles" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(ReadFileFn(cfg.read))
    )
    file_stats = read | "FileStats" >> beam.Map(lambda x: x.get(FILE_STATS)) | "OnlyStats" >> beam.Filter(bool)
    cleaned = read | "Docs" >> beam.Filter(lambda x: FILE_STATS not in x) | "Clean" >> beam.ParDo(CleanFn(cfg))
    kept = cleaned | "Kept" >> beam.Filter(lambda d: not d["reason"])
    rejected = cleaned | "Rejected" >> beam.Filter(lambda d: bool(d["reason"]))
    kept = kept | "TextHash" >> beam.Map(_with_text_hash)
    if cfg.exact_dedup.enabled:
        keyed = kept | "DedupKey" >> beam.Map(lambda d: (d["text_hash"], d))
        if published is not None:
            pub_hashes = published | "PublishedHashes" >> beam.Map(lambda r: (r["text_hash"], r["node"]))
            keyed = (keyed, pub_hashes) | "WithPublishedHashes" >> beam.Flatten()
        deduped = (
            keyed
            | "DedupGroup" >> beam.GroupByKey()
            | "ExactDedupKeep" >> beam.FlatMap(_keep_smallest)
        )
        kept = deduped | "Unique" >> beam.Filter(lambda d: not d["reason"])
        dups = deduped | "Duplicates" >> beam.Filter(lambda d: bool(d["reason"]))
        rejected = (rejected, dups) | "AllRejected" >> beam.Flatten()
    cc_changes = p | "NoClustering" >> beam.Create([])
    if cfg.near_dedup.enabled:
        clustered, cc_changes = near_dedup(kept, cfg.near_dedup, shards.join(output, SPILL_DIR), published=published)
        kept = clustered | "NearUnique" >> beam.Filter(lambda d: not d["reason"])
        near_dups = clustered | "NearDuplicates" >> beam.Filter(lambda d: bool(d["reason"]))
        rejected = (rejected, near_dups) | "AllRejectedNear" >> beam.Flatten()

    counts = (
        (kept, rejected)
        | "AllDocs" >> beam.Flatten()
        | "CountKeys" >> beam.FlatMap(_count_keys)
        | "Count" >> beam.combiners.Count.PerElement()
    )
    kept_shards = write_partitioned(kept, "Kept", _lang_of, output, "lang=", "corpus", cfg)
    if cfg.write.write_rejected:
        rejected_shards = write_partitioned(rejected, "Rejected", _stage_of, output, "_rejected/reason=", "rejected", cfg)
    else:
        rejected_shards = p | "NoRejected" >> beam.Create([])
    if cfg.near_dedup.enabled:
        index_rows = kept | "IndexRows" >> beam.Map(_index_row)
        index_shards = write_partitioned(index_rows, "Index", _no_partition, output, "_index/", "index", cfg,
                                         size_fn=operator.itemgetter("text_bytes"))
    else:
        index_shards = p | "NoIndex" >> beam.Create([])
    written = [
        collect_stats("counts", counts, output),
        collect_stats("shards", kept_shards, output),
        collect_stats("rejected_shards", rejected_shards, output),
        collect_stats("index_shards", index_shards, output),
        collect_stats("files", file_stats, output),
        collect_stats("cc_rounds", cc_changes, output),
    ]
    # One sink that depends on every branch, applied last: the DaskRunner computes only the graph
    # of the pipeline's last transform, so a branch not feeding it would silently not run.
    return written | "AllWritten" >> beam.Flatten() | "Done" >> beam.Map(_done)


def _done(name):
    return name


# ---------------------------------------------------------------------------------------------
# Driver: finalise
# ---------------------------------------------------------------------------------------------


def funnel(read: int, dropped_by_reason: dict[str, int]) -> list[dict]:
    by_stage: Counter[str] = Counter()
    for reason, n in dropped_by_reason.items():
        by_stage[reason.split(":", 1)[0]] += n
    rows, remaining = [], read
    for stage in STAGES:
        d = by_stage.pop(stage, 0)
        rows.append({"stage": stage, "in": remaining, "dropped": d, "out": remaining - d})
        remaining -= d
    for stage, d in sorted(by_stage.items()):  # stages from a newer config, kept visible
        rows.append({"stage": stage, "in": remaining, "dropped": d, "out": remaining - d})
        remaining -= d
    return rows


def build_manifest(plan: InputPlan, stats: dict, cfg: GristmillConfig) -> dict:
    raw = stats["counts"]
    counts: Counter[str] = Counter()
    dropped_by: dict[str, int] = {}
    langs: dict[str, dict[str, int]] = {}
    for key, n in raw.items():
        kind, _, arg = key.partition("\x00")
        if kind == "dropped":
            dropped_by[arg] = n
        elif kind in ("lang_kept", "lang_dropped"):
            langs.setdefault(arg, {"kept": 0, "dropped": 0})[kind.split("_")[1]] = n
        else:
            counts[kind] = n
    read, kept = counts["read"], counts["kept"]
    near = None
    if cfg.near_dedup.enabled:
        nd = cfg.near_dedup
        changed = {int(k.split("-")[1]): n for k, n in stats["cc_rounds"]}
        if nd.max_rounds in changed:
            raise RuntimeError(
                f"near-dedup clustering did not converge in {nd.max_rounds} rounds "
                f"({changed[nd.max_rounds]} edges still changed in the last one); "
                "raise near_dedup.max_rounds and run again"
            )
        bands, rows = nd.lsh_params()
        near = {
            "bands": bands,
            "rows": rows,
            "minhash_scheme": MINHASH_SCHEME,
            "rounds_to_converge": max(changed, default=0) + 1,
            "clusters": counts["near_dup_clusters"],
            "duplicates_removed": dropped_by.get("near_dedup:duplicate", 0),
        }
    if read != kept + sum(dropped_by.values()):
        raise RuntimeError(f"accounting error: read {read} != kept {kept} + dropped {sum(dropped_by.values())}")
    per_file_docs = sum(f["documents"] for f in stats["files"])
    if per_file_docs != read:
        raise RuntimeError(f"accounting error: files report {per_file_docs} documents, pipeline read {read}")
    return {
        "gristmill_version": __version__,
        "kind": "corpus",
        "schema_version": SCHEMA_VERSION,
        "schema": {f.name: str(f.type) for f in CORPUS_SCHEMA},
        "config_sha256": cfg.fingerprint(),
        "config": cfg.model_dump(mode="json"),
        "inputs": stats["files"],
        "skipped_inputs": plan.skipped,
        "duplicate_inputs": plan.duplicates,
        "counts": {
            "read": read,
            "kept": kept,
            "dropped": dict(sorted(dropped_by.items())),
            "input_files": len(plan.files),
            "skipped_files": len(plan.skipped),
        },
        "funnel": funnel(read, dropped_by),
        "near_dedup": near,
        "languages": dict(sorted(langs.items(), key=lambda kv: (-kv[1]["kept"], kv[0]))),
        "shards": stats["shards"],
        "rejected_shards": stats["rejected_shards"],
        "index_shards": stats.get("index_shards", []),
    }


def _remove_stale(output: str, manifest: dict) -> list[str]:
    """Delete shards and temporaries not written by this run (a crashed or differently configured
    earlier run into the same directory)."""
    keep = {s["path"] for key in ("shards", "rejected_shards", "index_shards") for s in manifest[key]}
    stale = []
    for rel in shards.list_files(output, "lang=") + shards.list_files(output, "_rejected/") + shards.list_files(output, "_index/"):
        if rel not in keep:
            stale.append(rel)
    if stale:
        FileSystems.delete([shards.join(output, r) for r in stale])
    return stale


def _remove_dir(path: str) -> None:
    if FileSystems.exists(path):
        FileSystems.delete([path])


@dataclass
class RunResult:
    manifest: dict
    manifest_path: str
    report_path: str | None
    seconds: float


def run_corpus(
    inputs: list[str],
    output: str,
    cfg: GristmillConfig,
    beam_args: list[str] | None = None,
    skip_bad_files: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    published: "PublishedCorpus | None" = None,
) -> RunResult:
    t0 = time.time()
    output = output.rstrip("/") if "://" in output else os.path.abspath(output)
    # fail early on config problems a worker would hit later (missing model, missing blocklist)
    Cleaner(cfg)
    plan = plan_inputs(inputs, cfg.read, skip_bad_files=skip_bad_files, progress=progress)
    log.info(
        "%d input files (%s bytes)%s%s",
        len(plan.files),
        f"{sum(plan.sizes.values()):,}",
        f", {len(plan.skipped)} skipped" if plan.skipped else "",
        f", {len(plan.duplicates)} named twice (read once)" if plan.duplicates else "",
    )
    prepare_output(output, overwrite)
    _remove_dir(shards.join(output, SPILL_DIR))  # left by a crashed run
    options = PipelineOptions(beam_args or [])
    log.info("running the Beam pipeline (runner: %s)", options.get_all_options().get("runner") or "DirectRunner")
    p = beam.Pipeline(options=options)
    build_pipeline(p, plan, output, cfg, published.index_files if published else None)
    result = p.run()
    try:
        state = result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # the DaskRunner leaves its client open
        if client is not None:
            client.close()
    if state not in ("DONE", None):
        raise RuntimeError(f"the Beam pipeline ended in state {state}")
    stats = {}
    for name in ("counts", "shards", "rejected_shards", "index_shards", "files", "cc_rounds"):
        path = shards.join(output, STATS_DIR, f"{name}.json")
        stats[name] = shards.read_json(path) if FileSystems.exists(path) else []
    stats["counts"] = dict(stats["counts"])
    stats["shards"].sort(key=lambda x: x["path"])
    stats["rejected_shards"].sort(key=lambda x: x["path"])
    stats["index_shards"].sort(key=lambda x: x["path"])
    stats["files"].sort(key=lambda x: x["path"])
    manifest = build_manifest(plan, stats, cfg)
    if published is not None:
        manifest.update(published.lineage(output, manifest))
        shards.write_json_atomic(shards.join(output, "versions.json"), manifest["versions"])
    stale = _remove_stale(output, manifest)
    if stale:
        log.info("removed %d stale file(s) from an earlier run", len(stale))
    FileSystems.delete([shards.join(output, STATS_DIR)])
    _remove_dir(shards.join(output, SPILL_DIR))
    manifest_path = shards.join(output, "manifest.json")
    shards.write_json_atomic(manifest_path, manifest)
    seconds = time.time() - t0
    report_path = None
    if cfg.write.html_report:
        from pipelines.report import write_html_report

        report_path = shards.join(output, "report.html")
        write_html_report(manifest, report_path)  # no timings: the whole directory is deterministic
    return RunResult(manifest, manifest_path, report_path, seconds)
