"""Near-duplicate removal, public, exactly as ``gristmill corpus`` runs it: three steps.

A Beam graph is fixed before it runs, but the clustering should run only the rounds it needs (web crawls
converge in 2–4). So near-dedup is split at the clustering, and a caller runs::

    # 1. in a pipeline of yours: the documents still kept → signed, spilled to WORK, candidate edges in WORK
    kept | NearDedupEdges(cfg.near_dedup, work_dir)
    # 2. after that pipeline has run, in the driver: clustering rounds until one changes nothing
    clustering = cluster(work_dir, cfg.near_dedup, beam_args)
    # 3. in the next pipeline: the spilled documents with cluster_id/cluster_size, near duplicates marked
    docs = p | MarkNearDuplicates(clustering)

or :func:`near_dedup`, which runs the three with one call. The contract of ``work_dir``: a directory
every worker reaches (local, or any Beam filesystem), empty or missing when step 1 starts, holding only
what these steps write there (the documents while they wait, edge files, the lists of both) and
removed by the caller after step 3 (:func:`remove_work`). Only what is light crosses from a pipeline
to the driver: the names of the files, and the number of edges each round changed.

Step 2 runs each round in the driver's memory while the graph has at most ``in_memory_max_edges``
edges (the same functions on the same groups: the same labels and change counts), else as one
small pipeline per round on the runner (:mod:`gristmill.dedupe.rounds`). The steps themselves
(candidate edges, star rounds, marking) are :mod:`gristmill.dedupe.beam`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import apache_beam as beam

from gristmill import io
from gristmill.dedupe import rounds
from gristmill.dedupe.beam import SPILL_FILE_DOCS, SpillFilesFn, candidate_edges, mark_documents, spill_locations
from gristmill.pipelines.runner import collect_stats, read_stats, run_pipeline

__all__ = ["Clustering", "MarkNearDuplicates", "NearDedupEdges", "cluster", "near_dedup", "remove_work"]

log = logging.getLogger("gristmill.corpus")

SPILL_FILES = "spill_files"


def round_dir(work_dir: str, r: int) -> str:
    """Where round ``r``'s edge files go (round 0: the candidate edges)."""
    return io.join(work_dir, "cc", f"r{r:02d}")


def edges_stat(r: int) -> str:
    return f"cc_edges_{r:02d}"


def changes_stat(r: int) -> str:
    return f"cc_changes_{r:02d}"


class NearDedupEdges(beam.PTransform):
    """Step 1: documents (the ones still kept) → each signed and packed into a spill file under
    ``work_dir``, and the verified candidate edges written there as round 0 of the clustering.
    Returns the PCollection of the two file lists it recorded (a sink: nothing to consume).

    ``published``: index rows of a published corpus (a refresh): its documents join the buckets and
    the clustering but are never output; a new document clustered with one is marked
    ``near_dedup:published_duplicate``. ``signed``: the documents already carry the signature of
    ``cfg`` (``gristmill corpus`` signs while cleaning). ``spill_file_docs``: documents per spill file."""

    def __init__(self, cfg, work_dir: str, published=None, *, signed: bool = False,
                 spill_file_docs: int = SPILL_FILE_DOCS):
        super().__init__()
        self.cfg, self.work_dir, self.published, self.signed = cfg, work_dir, published, signed
        self.spill_file_docs = spill_file_docs

    def expand(self, docs):
        signed, edges = candidate_edges(docs, self.cfg, self.published, "NearDedup", signed=self.signed)
        spill_files = signed | "SpillDocs" >> beam.ParDo(SpillFilesFn(self.work_dir, self.spill_file_docs))
        edge_files = (rounds.normalised_edges(edges, "CC")
                      | "WriteEdges" >> beam.ParDo(rounds.WriteEdgesFn(round_dir(self.work_dir, 0))))
        return ((collect_stats(SPILL_FILES, spill_files, self.work_dir),
                 collect_stats(edges_stat(0), edge_files, self.work_dir))
                | "Recorded" >> beam.Flatten())


@dataclass
class Clustering:
    """What step 2 found: ``rounds`` holds ("round-kk", edges changed) for each round that changed
    edges (converged when fewer than ``max_rounds``, or when the last ran round changed nothing);
    ``label_files`` the last round's edge files: (node, cluster minimum) for every clustered node
    but the minimum; ``spill_files`` where step 1 left the documents."""

    rounds: list[tuple[str, int]] = field(default_factory=list)
    label_files: list[str] = field(default_factory=list)
    spill_files: list[str] = field(default_factory=list)


def build_round_pipeline(p: beam.Pipeline, work_dir: str, edge_files: list[str], r: int) -> beam.PCollection:
    """Clustering round ``r`` on the runner: the edge files of round r-1 → those of round r, and its changes."""
    edges = rounds.files_of(p, "LastEdges", edge_files) | "ReadEdges" >> beam.FlatMap(rounds.read_edges)
    out, changes = rounds.one_round(edges, r, "NearDedupCC")
    files = out | "WriteEdges" >> beam.ParDo(rounds.WriteEdgesFn(round_dir(work_dir, r)))
    written = [collect_stats(edges_stat(r), files, work_dir), collect_stats(changes_stat(r), changes, work_dir)]
    return written | "AllWritten" >> beam.Flatten()


def cluster(work_dir: str, cfg, beam_args: list[str] | None = None,
            in_memory_max_edges: int = rounds.IN_MEMORY_MAX_EDGES) -> Clustering:
    """Step 2: the clustering rounds over step 1's edges until one changes nothing (converged) or
    ``cfg.max_rounds`` have run (the caller decides what non-convergence means: ``gristmill corpus``
    fails). In the driver's memory while the graph has at most ``in_memory_max_edges`` edges, else one
    small pipeline each with ``beam_args``."""
    edge_files = read_stats(work_dir, edges_stat(0))
    edges = rounds.read_edges_up_to(edge_files, in_memory_max_edges) if edge_files else None
    changed: list = []
    r = 0
    while (edge_files or edges) and r < cfg.max_rounds:
        r += 1
        started = time.monotonic()
        if edges is not None:
            edges, n = rounds.one_round_in_memory(set(edges), r)
            where = "in memory"
        else:
            run_pipeline(lambda p, r=r, files=edge_files: build_round_pipeline(p, work_dir, files, r), beam_args)
            n = sum(x for _, x in read_stats(work_dir, changes_stat(r)))
            io.remove_tree(round_dir(work_dir, r - 1))
            edge_files = read_stats(work_dir, edges_stat(r))
            where = "a pipeline"
        log.info("near-dedup clustering: round %d changed %s edges (%s, %.1f s)", r, f"{n:,}", where,
                 time.monotonic() - started)
        if not n:
            break
        changed.append((f"round-{r:02d}", n))
    if edges is not None:  # the labels, for the last step
        edge_files = [io.join(round_dir(work_dir, r), "labels.arrow")]
        rounds.write_edges_file(edge_files[0], edges)
    return Clustering(changed, edge_files, read_stats(work_dir, SPILL_FILES))


class MarkNearDuplicates(beam.PTransform):
    """Step 3, at the start of a pipeline (``p | MarkNearDuplicates(clustering)``): step 1's spilled
    documents, each with ``cluster_id`` and ``cluster_size``; all but each cluster's smallest
    (id, source) marked ``near_dedup:duplicate`` (or ``near_dedup:published_duplicate``)."""

    def __init__(self, clustering: Clustering):
        super().__init__()
        self.clustering = clustering

    def expand(self, p):
        labels = (rounds.files_of(p, "Labels", self.clustering.label_files)
                  | "ReadLabels" >> beam.FlatMap(rounds.read_edges))
        locations = (rounds.files_of(p, "Spilled", self.clustering.spill_files)
                     | "ReadSpilled" >> beam.FlatMap(spill_locations))
        return mark_documents(labels, locations, "NearDedup")


def remove_work(work_dir: str) -> None:
    io.remove_tree(work_dir)


def near_dedup(read: Callable[[beam.Pipeline], beam.PCollection], write: Callable[[beam.PCollection], object],
               cfg, work_dir: str, beam_args: list[str] | None = None, *, published=None,
               spill_file_docs: int = SPILL_FILE_DOCS) -> Clustering:
    """The three steps in a row: ``read(p)`` gives the documents in the first pipeline, ``write(docs)``
    consumes the marked documents in the last; ``published`` (a function of the first pipeline, giving
    index rows) as for :class:`NearDedupEdges`. ``work_dir`` is removed at the end, whatever happens."""
    try:
        run_pipeline(lambda p: read(p) | NearDedupEdges(cfg, work_dir, published(p) if published else None,
                                                        spill_file_docs=spill_file_docs), beam_args)
        clustering = cluster(work_dir, cfg, beam_args)
        run_pipeline(lambda p: write(p | MarkNearDuplicates(clustering)), beam_args)
        return clustering
    finally:
        remove_work(work_dir)
