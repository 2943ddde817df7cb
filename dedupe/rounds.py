"""Near-dedup's clustering rounds, one at a time (pipelines/near_dedup.py runs them, for
``gristmill corpus`` and for any caller).

A Beam graph is fixed before it runs, so the clustering is split from the pipelines around it: the
first one writes the verified candidate edges to edge files (:class:`WriteEdgesFn`); then each round
of large-star / small-star (:func:`one_round`, the markers of :mod:`~gristmill.dedupe.components`
counting the edges it changed) reads the last round's edge files and writes the next round's, as a
small pipeline of its own, or, while the graph is small (at most :data:`IN_MEMORY_MAX_EDGES` edges), in
the driver's memory (:func:`one_round_in_memory`: the same functions on the same groups, so the same
labels and change counts). The driver stops after the first round that changed nothing (its output
equals its input: the fixed point, whose edges are the labels).

Every step is a streamed, bounded-memory Beam step; only what is light crosses between pipelines
(edge files: two node names per edge; the spill files' names).
"""

from __future__ import annotations

import uuid
from collections import defaultdict

import apache_beam as beam
import pyarrow as pa

from gristmill import io
from gristmill.dedupe import components as cc
from gristmill.dedupe.beam import split_markers, star_round

_EDGE_SCHEMA = pa.schema([pa.field("u", pa.string(), nullable=False), pa.field("v", pa.string(), nullable=False)])
#: edges per record batch of an edge file
EDGE_BATCH = 65536


class WriteEdgesFn(beam.DoFn):
    """Edges (u, v) → Arrow files in ``directory``, one per bundle (in batches; renamed into place
    at the end of the bundle). Outputs each file's path with its first edge: a bundle's outputs are
    committed only after its ``finish_bundle``, so every path named downstream is a complete file,
    and a retried bundle's orphan is never named. (Not from ``finish_bundle``: the DaskRunner drops
    what that yields.)"""

    def __init__(self, directory: str):
        self.directory = directory

    def start_bundle(self):
        self._writer = None

    def process(self, edge):
        if self._writer is None:
            path = io.join(self.directory, f"{uuid.uuid4().hex}.arrow")
            self._writer = io.ArrowFileWriter(path, _EDGE_SCHEMA, EDGE_BATCH)
            yield path
        u, v = edge
        self._writer.add({"u": u, "v": v})

    def finish_bundle(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_edges(path: str):
    for batch in io.iter_batches(path):
        yield from zip(batch.column("u").to_pylist(), batch.column("v").to_pylist())


def files_of(p, name: str, paths: list[str]):
    """A PCollection of the given files, spread over the workers."""
    return p | f"{name}Files" >> beam.Create(sorted(paths)) | f"{name}Spread" >> beam.Reshuffle()


def normalised_edges(edges, label: str):
    """Candidate edges → distinct (larger, smaller) pairs: the input of the first round."""
    return edges | f"{label}Norm0" >> beam.Map(cc.larger_first) | f"{label}Distinct0" >> beam.Distinct()


def one_round(edges, r: int, label: str = "CC"):
    """One large-star + small-star round. Returns (next edges, ("round-kk", n) with n > 0 the edges
    this round changed; empty when it changed nothing)."""
    return split_markers(star_round(edges, r, label), label, str(r))


#: up to this many candidate edges the rounds run in the driver's memory (≈ 250 bytes an edge in
#: Python: ~125 MB at the limit); above it, one small pipeline per round on the runner
IN_MEMORY_MAX_EDGES = 500_000


def read_edges_up_to(paths: list[str], limit: int) -> list[tuple[str, str]] | None:
    """Every edge of the files, or None as soon as there are more than ``limit``."""
    edges: list[tuple[str, str]] = []
    for path in paths:
        for batch in io.iter_batches(path):
            if len(edges) + batch.num_rows > limit:
                return None
            edges.extend(zip(batch.column("u").to_pylist(), batch.column("v").to_pylist()))
    return edges


def one_round_in_memory(edges: set[tuple[str, str]], r: int) -> tuple[set[tuple[str, str]], int]:
    """:func:`one_round` on a set in memory: the same steps (dedupe/components.py's functions on the
    same groups), so the same edges and the same change count. Returns (next edges, changes)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for edge in edges:
        for u, v in cc.both_directions(edge):
            groups[u].append(v)
    smaller: dict[str, list[str]] = defaultdict(list)
    for item in groups.items():
        for edge in cc.large_star(item, r):
            u, v = cc.larger_first(edge)
            smaller[u].append(v)
    out: set = set()
    for item in smaller.items():
        out.update(cc.small_star(item, r))
    changes = sum(value[3] for u, value in out if u == cc.MARKER)
    return {e for e in out if not cc.is_marker(e)}, changes


def write_edges_file(path: str, edges) -> None:
    writer = io.ArrowFileWriter(path, _EDGE_SCHEMA, EDGE_BATCH)
    for u, v in sorted(edges):
        writer.add({"u": u, "v": v})
    writer.close()


__all__ = ["IN_MEMORY_MAX_EDGES", "WriteEdgesFn", "files_of", "normalised_edges", "one_round", "one_round_in_memory",
           "read_edges", "read_edges_up_to", "write_edges_file"]
