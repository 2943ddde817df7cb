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

import contextlib
import logging
import operator
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import apache_beam as beam

from gristmill import __version__, io
from gristmill.config import GristmillConfig, ReadConfig
from gristmill.dedupe.minhash import SCHEME as MINHASH_SCHEME
from gristmill.dedupe.minhash import lsh_params
from gristmill.documents import CORPUS_SCHEMA, SCHEMA_VERSION
from gristmill.errors import ExitCode, GristmillError
from gristmill.locks import directory_lock
from gristmill.outputs import begin_output, check_output, recorded_run
from gristmill.pipelines import langid, quality, report
from gristmill.pipelines.card import write_card
from gristmill.pipelines.clean import Cleaner, stages, step_order
from gristmill.pipelines.decontaminate import REASON as DECONTAMINATED
from gristmill.pipelines.decontaminate import Decontaminate, EvaluationSets, load_evaluation_sets
from gristmill.pipelines.near_dedup import Clustering, MarkNearDuplicates, NearDedupEdges, cluster
from gristmill.pipelines.progress import CorpusProgress
from gristmill.pipelines.readers import probe
from gristmill.pipelines.refresh_index import PublishedCorpus, read_index_rows
from gristmill.pipelines.resume import WORK_DIR
from gristmill.pipelines.runner import (
    check_runner,
    collect_stats,
    read_stats,
    remove_stats,
    run_pipeline,
)
from gristmill.pipelines.transforms import (
    ExactDedup,
    ReadClean,
    UniqueIds,
    WriteShards,
    apply_id_changes,
    text_bytes,
)
from gristmill.pipelines.workpool import plan_local_workers, stop_pools

log = logging.getLogger("gristmill.corpus")

SPILL_DIR = "_spill"  # documents waiting for their near-dedup clusters; removed after the run
#: the statistics the job hands the driver (see runner.collect_stats)
STATS = ("counts", "shards", "rejected_shards", "index_shards", "files", "cc_rounds", "id_changes", "quality_hist",
         "report_samples", "report_clusters")


class PipelineInputError(GristmillError):
    """Inputs that cannot be used; the message lists each file and its problem."""

    exit_code = ExitCode.INPUT


class AccountingError(GristmillError, RuntimeError):
    """The counts do not balance (read != kept + dropped): a bug, reported as a distinct exit code."""

    exit_code = ExitCode.INTEGRITY
    label = "accounting error"


class ClusteringError(GristmillError, RuntimeError):
    """Near-dedup clustering did not converge in the configured rounds."""


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


def plan_inputs(patterns: list[str], read_cfg: ReadConfig, skip_bad_files: bool = False,
                progress: bool = True) -> InputPlan:
    paths: list[str] = []
    for pattern in patterns:
        local = "://" not in pattern
        pat = os.path.abspath(pattern) if local else pattern
        if local and os.path.lexists(pat) and not os.path.isdir(pat):
            paths.append(pat)  # a file that exists is that file, even with glob characters in its name
            continue
        try:
            matched = io.filesystems().match([pat])[0].metadata_list
        except Exception as e:  # noqa: BLE001
            raise PipelineInputError(f"input {pattern!r}: cannot list: {e}") from e
        found = sorted(m.path for m in matched if not (local and os.path.isdir(m.path)))
        if not found:
            if local and os.path.isdir(pat):
                suggestion = os.path.join(pattern, "*") if not pattern.endswith("/") else pattern + "*"
                raise PipelineInputError(f"input {pattern!r} is a directory: give the files in it, e.g. '{suggestion}' "
                                         "(quoted, so gristmill expands the glob)")
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


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def _count_keys(doc: dict, read: bool = True):
    """The counter keys of one document (``read``: whether it counts as read here: a document
    counted once when read and again after near-dedup must not count twice)."""
    if read:
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
    yield from report.report_keys(doc)  # the report's per-file, per-language and histogram counters


def _read_key(doc: dict):
    yield "read"


def _index_row(doc) -> dict:
    """What an index shard holds of a kept document (documents.INDEX_SCHEMA), and its text size,
    which sizes the index shards as the corpus shards are sized: the text itself stays out of the
    index's groups."""
    return {"id": doc["id"], "source": doc["source"], "text_hash": doc["text_hash"], "_sig": doc["_sig"],
            "_band_keys": doc["_band_keys"], "text_bytes": text_bytes(doc)}


def _no_partition(d):
    return ""


def _stage_of(d):
    return d["reason"].split(":", 1)[0]


def _is_kept(d) -> bool:
    return not d["reason"]


def _is_dropped(d) -> bool:
    return bool(d["reason"])


def build_pipeline(
    p: beam.Pipeline, plan: InputPlan, output: str, cfg: GristmillConfig, published_index: list[str] | None = None,
    pool_workers: int = 1, evaluation: EvaluationSets | None = None, quality_cuts: dict[str, int] | None = None,
    langid_thresholds: dict[str, float] | None = None,
) -> beam.PCollection:
    """The corpus pipeline; with ``published_index`` (the index files of a published corpus), new
    documents are also deduplicated against that corpus (``gristmill refresh``). ``pool_workers``:
    processes for the per-file work on the in-process runner (pipelines/workpool.py);
    ``evaluation``: the checked evaluation files of decontamination (read again when not given);
    ``quality_cuts``: per language the lowest histogram bin kept, when the quality classifier keeps a
    top fraction (:func:`build_quality_prepass` counted the scores); ``langid_thresholds``: per language
    the language-ID threshold, with ``langid.threshold: auto`` (:func:`build_langid_prepass`). Returns
    its one sink (see the end).

    With near-dedup on, this is the first of the run's pipelines: it ends with the documents still
    kept spilled to files and their candidate edges written for the clustering rounds
    (pipelines/near_dedup.py's three steps; :func:`build_write_pipeline` holds the third)."""
    published = None
    if published_index:
        published = (
            p
            | "PublishedIndexFiles" >> beam.Create(sorted(published_index))
            | "SpreadIndexFiles" >> beam.Reshuffle()
            | "ReadPublishedIndex" >> beam.FlatMap(read_index_rows)
        )
    # read + clean (ReadFiles | Clean, fused so that each file's cleaned documents are kept for a rerun)
    cleaned, file_stats = _read_clean(p, plan, output, cfg, pool_workers)
    if cfg.langid.auto:
        cleaned = cleaned | "LangIdCut" >> beam.Map(langid.cut, dict(langid_thresholds or {}))
    kept = cleaned | "Kept" >> beam.Filter(_is_kept)
    rejected = cleaned | "Rejected" >> beam.Filter(_is_dropped)
    written = []
    if cfg.clean.quality.enabled:
        scored = kept | "QualityCut" >> beam.Map(quality.mark, cfg.clean.quality, dict(quality_cuts or {}))
        decisions = (scored | "QualityDecisions" >> beam.FlatMap(quality.decision_key)
                     | "CountQuality" >> beam.combiners.Count.PerElement())
        written.append(collect_stats("quality_hist", decisions, output))
        kept = scored | "QualityKept" >> beam.Filter(_is_kept)
        low = scored | "QualityLow" >> beam.Filter(_is_dropped)
        rejected = (rejected, low) | "RejectedOrLowQuality" >> beam.Flatten()
    if cfg.decontaminate.enabled:
        lengths = evaluation.short_lengths if evaluation is not None else None
        marked = kept | "Decontaminate" >> Decontaminate(cfg.decontaminate, lengths)
        kept = marked | "Uncontaminated" >> beam.Filter(_is_kept)
        contaminated = marked | "Contaminated" >> beam.Filter(_is_dropped)
        rejected = (rejected, contaminated) | "RejectedOrContaminated" >> beam.Flatten()
    id_changes = kept | "UniqueIds" >> UniqueIds()
    if cfg.exact_dedup.enabled:
        pub_hashes = None
        if published is not None:
            pub_hashes = published | "PublishedHashes" >> beam.Map(lambda r: (r["text_hash"], r["node"]))
        exact = kept | "ExactDedup" >> ExactDedup(pub_hashes, id_changes)
        kept = exact | "Unique" >> beam.Filter(_is_kept)
        dups = exact | "Duplicates" >> beam.Filter(_is_dropped)
        rejected = (rejected, dups) | "AllRejected" >> beam.Flatten()
    else:
        kept = apply_id_changes(kept, id_changes)
    n_changes = (id_changes | "CountIdChanges" >> beam.Map(lambda _: ("across_files", 1))
                 | "SumIdChanges" >> beam.CombinePerKey(sum))
    written += [collect_stats("files", file_stats, output), collect_stats("id_changes", n_changes, output)]
    if cfg.near_dedup.enabled:
        # ReadCleanFileFn gave every kept document its text hash and signature
        written.append(kept | "NearDedupEdges" >> NearDedupEdges(cfg.near_dedup, io.join(output, SPILL_DIR),
                                                                 published, signed=True))
        counts = (
            ((kept | "CountRead" >> beam.FlatMap(_read_key)),
             (rejected | "CountRejected" >> beam.FlatMap(_count_keys)))
            | "AllKeys" >> beam.Flatten()
            | "Count" >> beam.combiners.Count.PerElement()
        )
        written += [collect_stats("counts", counts, output),
                    _report_samples(rejected, output, cfg, "report_samples"),
                    collect_stats("rejected_shards", _write_rejected(p, rejected, output, cfg), output)]
    else:
        written += _write_outputs(p, kept, rejected, output, cfg)
    # One sink that depends on every branch, applied last: the DaskRunner computes only the graph
    # of the pipeline's last transform, so a branch not feeding it would silently not run.
    return written | "AllWritten" >> beam.Flatten()


def _read_clean(p: beam.Pipeline, plan: InputPlan, output: str, cfg: GristmillConfig, pool_workers: int):
    """The run's input files read and cleaned, each file's work in OUTPUT/_work/: (documents, file stats)."""
    return p | "Inputs" >> beam.Create(plan.files) | "ReadClean" >> ReadClean(cfg, io.join(output, WORK_DIR),
                                                                             pool_workers)


def build_langid_prepass(p: beam.Pipeline, plan: InputPlan, output: str, cfg: GristmillConfig,
                         pool_workers: int = 1) -> beam.PCollection:
    """``langid.threshold: auto`` needs every language's scores first: read and clean (the per-file work
    lands in ``_work/``, which the main pipeline replays) and count each language's scores exactly
    (``langid_prepass``; pipelines/langid.py turns them into thresholds)."""
    counts = (
        _read_clean(p, plan, output, cfg, pool_workers)[0]
        | "Scores" >> beam.FlatMap(langid.score_key)
        | "CountScores" >> beam.combiners.Count.PerElement()
    )
    return collect_stats("langid_prepass", counts, output)


def build_quality_prepass(p: beam.Pipeline, plan: InputPlan, output: str, cfg: GristmillConfig,
                          pool_workers: int = 1, langid_thresholds: dict[str, float] | None = None) -> beam.PCollection:
    """Keeping a top fraction per language needs every score first: read and clean (the per-file work
    lands in ``_work/``, which the main pipeline then replays instead of cleaning again) and count the
    scores into per-language histograms (``quality_prepass``)."""
    bins = (
        _read_clean(p, plan, output, cfg, pool_workers)[0]
        | "LangIdCut" >> beam.Map(lambda d: langid.cut(d, langid_thresholds) if langid_thresholds is not None else d)
        | "Kept" >> beam.Filter(_is_kept)
        | "ScoreBins" >> beam.FlatMap(quality.score_key)
        | "CountBins" >> beam.combiners.Count.PerElement()
    )
    return collect_stats("quality_prepass", bins, output)


def build_write_pipeline(p: beam.Pipeline, output: str, cfg: GristmillConfig,
                         clustering: Clustering) -> beam.PCollection:
    """The last pipeline of a run with near-dedup: the spilled documents marked by their clusters
    (pipelines/near_dedup.py) → shards, index, the near duplicates' rejected shards and their counts."""
    clustered = p | "MarkNearDuplicates" >> MarkNearDuplicates(clustering)
    kept = clustered | "NearUnique" >> beam.Filter(_is_kept)
    near_dups = clustered | "NearDuplicates" >> beam.Filter(_is_dropped)
    return _write_outputs(p, kept, near_dups, output, cfg, counted_as_read=False) | "AllWritten" >> beam.Flatten()


def rejected_prefix(cfg: GristmillConfig) -> str:
    """Where rejected shards go: ``_rejected/reason=<stage>/``, or for Parquet ``_rejected/stage=<stage>/``:
    hive-partitioning readers (DuckDB, polars) replace a file's column by the partition value of the
    same name, which would turn every ``reason`` (``stage:rule``) into its stage."""
    return "_rejected/stage=" if cfg.write.format == "parquet" else "_rejected/reason="


def _write_rejected(p, rejected, output: str, cfg: GristmillConfig):
    if cfg.write.write_rejected:
        return rejected | "WriteRejected" >> WriteShards(output, cfg.write, rejected_prefix(cfg), _stage_of,
                                                         "rejected")
    return p | "NoRejected" >> beam.Create([])


def _report_samples(rejected, output: str, cfg: GristmillConfig, name: str):
    """A few dropped documents per reason for report.html (pipelines/report.py): a bounded,
    deterministic sample combined per reason, snippets redacted."""
    samples = (
        rejected
        | f"{name}Entries" >> beam.Map(report.sample_entry)
        | f"{name}PerReason" >> beam.combiners.Top.SmallestPerKey(report.SAMPLES_PER_REASON, key=report.sample_order)
        | f"{name}Finish" >> beam.Map(report.finish_samples, cfg.clean.pii)
    )
    return collect_stats(name, samples, output)


def _report_clusters(docs, output: str):
    """The largest near-duplicate clusters with a few URLs each, for report.html: the first members
    of each cluster (combined per cluster), then the largest clusters (combined globally)."""
    largest = (
        docs
        | "ReportInCluster" >> beam.Filter(report.in_cluster)
        | "ReportMembers" >> beam.Map(report.cluster_member)
        | "ReportFirstMembers" >> beam.combiners.Top.SmallestPerKey(report.CLUSTER_URLS, key=report.member_order)
        | "ReportClusterSummary" >> beam.Map(report.cluster_summary)
        # one key, not CombineGlobally: that injects its default through a side input, which the DaskRunner lacks
        | "ReportOneKey" >> beam.Map(lambda c: ("largest", c))
        | "ReportLargest" >> beam.combiners.Top.SmallestPerKey(report.LARGEST_CLUSTERS, key=report.cluster_order)
        | "ReportLargestEach" >> beam.FlatMap(lambda kv: kv[1])
    )
    return collect_stats("report_clusters", largest, output)


def _write_outputs(p, kept, rejected, output: str, cfg: GristmillConfig, counted_as_read: bool = True) -> list:
    """Count, write the shards (kept, rejected, index) and hand their statistics to the driver.
    ``counted_as_read``: whether these documents are counted as read here (not when the first
    pipeline of a near-dedup run has counted them)."""
    every = (kept, rejected) | "AllDocs" >> beam.Flatten()
    counts = (
        every
        | "CountKeys" >> beam.FlatMap(_count_keys, counted_as_read)
        | "Count" >> beam.combiners.Count.PerElement()
    )
    kept_shards = kept | "WriteKept" >> WriteShards(output, cfg.write)
    rejected_shards = _write_rejected(p, rejected, output, cfg)
    if cfg.near_dedup.enabled:
        index_rows = kept | "IndexRows" >> beam.Map(_index_row)
        index_shards = index_rows | "WriteIndex" >> WriteShards(
            output, cfg.write, "_index/", _no_partition, "index", operator.itemgetter("text_bytes"))
    else:
        index_shards = p | "NoIndex" >> beam.Create([])
    suffix = "" if counted_as_read else "_near"
    report_stats = [_report_samples(rejected, output, cfg, "report_samples" + suffix)]
    if cfg.near_dedup.enabled:
        report_stats.append(_report_clusters(every, output))
    return [collect_stats(name, pcoll, output) for name, pcoll in (
        ("counts" + suffix, counts), ("shards", kept_shards), ("rejected_shards" + suffix, rejected_shards),
        ("index_shards", index_shards))] + report_stats


# ---------------------------------------------------------------------------------------------
# Driver: finalise
# ---------------------------------------------------------------------------------------------


def funnel(read: int, dropped_by_reason: dict[str, int], stage_order: tuple[str, ...]) -> list[dict]:
    """Documents in, dropped and out of each stage, in pipeline order."""
    by_stage: Counter[str] = Counter()
    for reason, n in dropped_by_reason.items():
        by_stage[reason.split(":", 1)[0]] += n
    rows, remaining = [], read
    for stage in stage_order:
        d = by_stage.pop(stage, 0)
        rows.append({"stage": stage, "in": remaining, "dropped": d, "out": remaining - d})
        remaining -= d
    for stage, d in sorted(by_stage.items()):  # stages from a newer config, kept visible
        rows.append({"stage": stage, "in": remaining, "dropped": d, "out": remaining - d})
        remaining -= d
    return rows


def build_manifest(plan: InputPlan, stats: dict, cfg: GristmillConfig,
                   evaluation: EvaluationSets | None = None) -> dict:
    raw = stats["counts"]
    counts: Counter[str] = Counter()
    dropped_by: dict[str, int] = {}
    langs: dict[str, dict[str, int]] = {}
    report_counts: dict[str, int] = {}
    for key, n in raw.items():
        kind, _, arg = key.partition("\x00")
        if kind in report.COUNT_KINDS:
            report_counts[key] = n
        elif kind == "dropped":
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
            raise ClusteringError(
                f"near-dedup clustering did not converge in {nd.max_rounds} rounds "
                f"({changed[nd.max_rounds]} edges still changed in the last one); "
                "raise near_dedup.max_rounds and run again"
            )
        bands, rows = lsh_params(nd)
        near = {
            "bands": bands,
            "rows": rows,
            "minhash_scheme": MINHASH_SCHEME,
            "rounds_to_converge": max(changed, default=0) + 1,
            "clusters": counts["near_dup_clusters"],
            "duplicates_removed": dropped_by.get("near_dedup:duplicate", 0),
        }
    if read != kept + sum(dropped_by.values()):
        raise AccountingError(f"read {read} != kept {kept} + dropped {sum(dropped_by.values())}")
    per_file_docs = sum(f["documents"] for f in stats["files"])
    if per_file_docs != read:
        raise AccountingError(f"files report {per_file_docs} documents, pipeline read {read}")
    inputs = []
    for f in stats["files"]:  # the clean steps' times: in the manifest's ``timings`` (_run)
        entry = {k: v for k, v in f.items() if k != "clean_steps"}
        entry["kept"], entry["dropped"] = report.file_counts(report_counts, f["source"])
        inputs.append(entry)
    steps = report.clean_steps([f.get("clean_steps") or {} for f in stats["files"]], step_order(cfg))
    manifest = {
        "gristmill_version": __version__,
        "kind": "corpus",
        "schema_version": SCHEMA_VERSION,
        "schema": {f.name: str(f.type) for f in CORPUS_SCHEMA},
        "config_sha256": cfg.fingerprint(),
        "config": cfg.model_dump(mode="json"),
        "inputs": inputs,
        "skipped_inputs": plan.skipped,
        "duplicate_inputs": plan.duplicates,
        "counts": {
            "read": read,
            "kept": kept,
            "dropped": dict(sorted(dropped_by.items())),
            "input_files": len(plan.files),
            "skipped_files": len(plan.skipped),
        },
        "funnel": funnel(read, dropped_by, stages(cfg)),
        # what the cleaning chain's steps did (their times are in ``timings``: all that differs between runs)
        "clean_steps": [{k: v for k, v in s.items() if k != "seconds"} for s in steps],
        "near_dedup": near,
        # ids made unique: repeated within a file (#<record number>), or used in two files (@<source>)
        "ids_renamed": {"within_files": sum(f.get("renamed_ids", 0) for f in stats["files"]),
                        "across_files": dict(stats["id_changes"]).get("across_files", 0)},
        "languages": dict(sorted(langs.items(), key=lambda kv: (-kv[1]["kept"], kv[0]))),
        "shards": stats["shards"],
        "rejected_shards": stats["rejected_shards"],
        "index_shards": stats["index_shards"],
        "report": report.report_entry(report_counts, report.merge_samples(stats.get("report_samples", []),
                                                                          stats.get("report_samples_near", [])),
                                      stats.get("report_clusters", [])),
    }
    if cfg.langid.auto or cfg.langid.per_language:  # only then: thresholds per language
        manifest["langid"] = langid.thresholds_entry(cfg.langid, stats.get("langid_thresholds"))
    if cfg.clean.quality.enabled:  # only then, as decontamination below
        manifest["quality"] = quality.manifest_entry(cfg.clean.quality, stats["quality_hist"],
                                                     stats.get("quality_cuts") or {})
    if cfg.decontaminate.enabled:  # only then: a run without it keeps the manifest it always had
        ev = evaluation or load_evaluation_sets(cfg.decontaminate)
        manifest["decontamination"] = ev.manifest_entry(cfg.decontaminate, dropped_by.get(DECONTAMINATED, 0))
    return manifest


def timings_entry(seconds: float, clean_steps: list[dict]) -> dict:
    """The manifest's ``timings``: the run's wall-clock seconds up to writing the manifest, and per
    clean step the seconds it took (summed over the workers; a rerun counts the files a crashed run
    cleaned at that run's times) — the one section that differs between two runs of the same input."""
    return {"seconds": round(seconds, 3),
            "clean_steps": [{"step": s["step"], "seconds": s["seconds"]} for s in clean_steps]}


def _remove_stale(output: str, manifest: dict) -> list[str]:
    """Delete shards and temporaries not written by this run (a crashed or differently configured
    earlier run into the same directory)."""
    keep = {s["path"] for key in ("shards", "rejected_shards", "index_shards") for s in manifest[key]}
    found = [rel for prefix in ("lang=", "_rejected/", "_index/") for rel in io.list_files(output, prefix)]
    stale = [rel for rel in found if rel not in keep]
    if stale:
        io.delete([io.join(output, r) for r in stale])
    return stale


@dataclass
class RunResult:
    manifest: dict
    manifest_path: str
    report_path: str | None
    seconds: float
    #: per clean step: documents, dropped, seconds (also in run.json; the manifest has all but the time)
    clean_steps: list = field(default_factory=list)


def read_run_stats(output: str, cc_rounds: list | None = None) -> dict:
    """The statistics the job's pipelines wrote, in a canonical order (``cc_rounds``: the
    clustering rounds' changes, gathered by the driver)."""
    stats = {name: read_stats(output, name) for name in STATS if name != "cc_rounds"}
    stats["cc_rounds"] = list(cc_rounds or [])
    counts: Counter[str] = Counter(dict(stats["counts"]))
    counts.update(dict(read_stats(output, "counts_near")))
    stats["counts"] = dict(counts)
    stats["rejected_shards"] += read_stats(output, "rejected_shards_near")
    stats["report_samples_near"] = read_stats(output, "report_samples_near")
    for name in ("shards", "rejected_shards", "index_shards", "files"):
        stats[name].sort(key=lambda x: x["path"])
    return stats


def run_corpus(
    inputs: list[str],
    output: str,
    cfg: GristmillConfig,
    beam_args: list[str] | None = None,
    skip_bad_files: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    published: PublishedCorpus | None = None,
    fresh: bool = False,
) -> RunResult:
    """Run the corpus pipeline (``gristmill corpus``; ``gristmill refresh`` with ``published``).

    One run at a time writes ``output`` (a lock; a second run is refused at once), and a refresh
    holds a shared lock on the published corpus it reads. While the run works the output has no
    manifest; a failed run leaves no temporaries but its per-file work (``_work/``), which the
    next run of the same command reuses unless ``fresh`` (pipelines/resume.py), and records how it
    ended in ``run.json``."""
    t0 = time.time()
    check_runner(beam_args)
    io.configure(beam_args)  # the driver reads and writes the same stores as the workers
    output = output.rstrip("/") if io.is_remote(output) else os.path.abspath(output)
    # fail early on config problems a worker would hit later (missing model, missing blocklist,
    # evaluation files missing or without text)
    Cleaner(cfg)
    evaluation = load_evaluation_sets(cfg.decontaminate) if cfg.decontaminate.enabled else None
    plan = plan_inputs(inputs, cfg.read, skip_bad_files=skip_bad_files, progress=progress)
    log.info(
        "%d input files (%s bytes)%s%s",
        len(plan.files),
        f"{sum(plan.sizes.values()):,}",
        f", {len(plan.skipped)} skipped" if plan.skipped else "",
        f", {len(plan.duplicates)} named twice (read once)" if plan.duplicates else "",
    )
    check_output(output, "corpus", overwrite)
    command = "refresh" if published is not None else "corpus"
    with contextlib.ExitStack() as held:
        held.enter_context(directory_lock(output, command))
        if published is not None:
            held.enter_context(directory_lock(published.path, command, shared=True))
        record = held.enter_context(recorded_run(output, command))
        begin_output(output, "corpus")
        if fresh:
            io.remove_tree(io.join(output, WORK_DIR))
        io.remove_temporaries(output)  # left by a crashed run
        try:
            result = _run(plan, output, cfg, beam_args, published, t0, progress, evaluation)
        finally:
            stop_pools()  # a failing or stopped run: no child may still be writing
            remove_stats(output)
            io.remove_tree(io.join(output, SPILL_DIR))
            io.remove_temporaries(output)
        io.remove_tree(io.join(output, WORK_DIR))  # done: nothing left to resume
        record.update(counts=result.manifest["counts"], inputs=len(plan.files), manifest=result.manifest_path,
                      clean_steps=result.clean_steps)
        if published is not None:
            record["versions"] = [v["path"] for v in result.manifest["versions"]]
        return result


def _published_thresholds(published: PublishedCorpus | None, cfg: GristmillConfig) -> dict[str, dict] | None:
    """A refresh with ``threshold: auto`` uses the thresholds the published version estimated (unless
    ``langid.auto_in_refresh: recompute``): a month's crawl is judged as the corpus it joins was."""
    if published is None or cfg.langid.auto_in_refresh != "published":
        return None
    entry = (published.manifest.get("langid") or {}).get("languages") or {}
    found = {lang: {**e, "source": f"published ({e.get('source', 'auto')})"} for lang, e in entry.items()
             if e.get("source") != "per_language"}
    if not found:
        log.warning("langid.threshold: auto, but the published corpus records no thresholds: estimating them anew")
        return None
    return found


def _log_thresholds(cfg: GristmillConfig, estimated: dict[str, dict]) -> None:
    shown = sorted(estimated.items(), key=lambda kv: -kv[1]["documents"] if "documents" in kv[1] else 0)
    log.info("language ID thresholds (auto): %s", ", ".join(
        f"{lang} {e['threshold']:.3f}" for lang, e in shown[:12]) + (" ..." if len(shown) > 12 else ""))
    few = [lang for lang, e in estimated.items() if e.get("source") == "fallback"]
    if few:
        log.info("language ID thresholds: %d language(s) with fewer than %d documents keep %s (too few to "
                 "estimate): %s", len(few), cfg.langid.auto_min_documents, cfg.langid.auto_fallback,
                 ", ".join(few[:20]) + (" ..." if len(few) > 20 else ""))


def _run(plan: InputPlan, output: str, cfg: GristmillConfig, beam_args, published, t0: float,
         progress: bool = True, evaluation: EvaluationSets | None = None) -> RunResult:
    io.remove_tree(io.join(output, SPILL_DIR))  # left by a crashed run
    index_files = published.index_files if published else None
    bar = progress and sys.stderr.isatty()
    workers, beam_args = plan_local_workers(beam_args)
    if workers > 1:
        log.info("reading and cleaning on %d processes", workers)
    cc_rounds: list = []
    cuts: dict[str, int] = {}
    estimated: dict[str, dict] | None = None
    thresholds: dict[str, float] | None = None
    with CorpusProgress(output, len(plan.files), sum(plan.sizes.values()), bar=bar, lines=progress) as watch:
        if cfg.langid.auto:
            estimated = _published_thresholds(published, cfg)
            if estimated is None:
                run_pipeline(lambda p: build_langid_prepass(p, plan, output, cfg, workers), beam_args)
                estimated = langid.auto_thresholds(cfg.langid, read_stats(output, "langid_prepass"))
            thresholds = {lang: e["threshold"] for lang, e in estimated.items()}
            _log_thresholds(cfg, estimated)
        if cfg.clean.quality.enabled and cfg.clean.quality.top_fraction is not None:
            run_pipeline(lambda p: build_quality_prepass(p, plan, output, cfg, workers, thresholds), beam_args)
            cuts = quality.top_fraction_cuts(cfg.clean.quality, read_stats(output, "quality_prepass"))
            log.info("quality: keeping the top fraction per language from score %s",
                     ", ".join(f"{lang} ≥ {quality.bin_floor(b):.4g}" for lang, b in cuts.items()) or "(none scored)")
        run_pipeline(lambda p: build_pipeline(p, plan, output, cfg, index_files, workers, evaluation, cuts,
                                              thresholds), beam_args)
        if cfg.near_dedup.enabled:
            watch.read_finished()
            clustering = cluster(io.join(output, SPILL_DIR), cfg.near_dedup, beam_args)
            cc_rounds = clustering.rounds
            watch.phase("writing shards")
            run_pipeline(lambda p: build_write_pipeline(p, output, cfg, clustering), beam_args)
    stats = read_run_stats(output, cc_rounds)
    stats["quality_cuts"] = cuts
    stats["langid_thresholds"] = estimated
    manifest = build_manifest(plan, stats, cfg, evaluation)
    clean_steps = report.clean_steps([f.get("clean_steps") or {} for f in stats["files"]], step_order(cfg))
    if cfg.write.timings:
        manifest["timings"] = timings_entry(time.time() - t0, clean_steps)
    if published is not None:
        manifest.update(published.lineage(output, manifest))
        io.write_json_atomic(io.join(output, "versions.json"), manifest["versions"])
    stale = _remove_stale(output, manifest)
    if stale:
        log.info("removed %d stale file(s) from an earlier run", len(stale))
    report_path = None
    if cfg.write.html_report:
        from gristmill.pipelines.report import write_html_report

        report_path = io.join(output, "report.html")
        write_html_report(manifest, report_path)
    write_card(output, manifest)
    # the manifest last: its presence is what says the output is complete
    manifest_path = io.join(output, "manifest.json")
    io.write_json_atomic(manifest_path, manifest)
    return RunResult(manifest, manifest_path, report_path, time.time() - t0, clean_steps)
