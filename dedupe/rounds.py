"""Near-dedup as ``gristmill corpus`` runs it: clustering rounds that stop when converged.

A Beam graph is fixed before it runs, so a one-pipeline clustering (:func:`~gristmill.dedupe.beam.near_dedup`)
must contain ``max_rounds`` rounds of large-star / small-star, three shuffles each, whether the
graph needs them or not (web crawls typically converge in 2–4 of the 8). Here the work is split at
the clustering instead, into pipelines the driver runs one after the other:

1. the main pipeline signs the documents, spills them to files (:class:`SpillFilesFn`) and writes
   the verified candidate edges to edge files (:class:`WriteEdgesFn`);
2. one small pipeline per round reads the last round's edge files and writes the next round's,
   with the number of edges the round changed (the markers of :mod:`~gristmill.dedupe.components`);
   the driver stops after the first round that changed nothing (its output equals its input: the
   fixed point the unrolled graph reaches too, so the labels are the same), or fails after
   ``max_rounds`` as before;
3. a last pipeline joins the final labels with the spilled documents, marks them and writes.

Every step is the same streamed, bounded-memory Beam step as in the one-pipeline form; only
what is light crosses between pipelines (edge files: two node names per edge; the spill files'
names). The files live under the run's spill directory, which the driver removes.
"""

from __future__ import annotations

import uuid

import apache_beam as beam
import pyarrow as pa

from gristmill import io
from gristmill.dedupe import components as cc
from gristmill.dedupe.beam import SPILL_FILE_DOCS, _round_key, _SpillDocumentsFn

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


class SpillFilesFn(_SpillDocumentsFn):
    """The documents packed into spill files (as :class:`~gristmill.dedupe.beam._SpillDocumentsFn`,
    which writes each file before its bundle's outputs are committed); outputs each file's path
    once, with its first document: the nodes are read back from the files."""

    def process(self, doc):
        new_file = self._path is None
        for _node, (_, path) in super().process(doc):
            if new_file:
                yield path


def spill_locations(path: str):
    """One spill file → (node, ("f", path)) for each document in it."""
    for batch in io.iter_batches(path, ["node"]):
        for node in batch.column("node").to_pylist():
            yield node, ("f", path)


def files_of(p, name: str, paths: list[str]):
    """A PCollection of the given files, spread over the workers."""
    return p | f"{name}Files" >> beam.Create(sorted(paths)) | f"{name}Spread" >> beam.Reshuffle()


def normalised_edges(edges, label: str):
    """Candidate edges → distinct (larger, smaller) pairs: the input of the first round."""
    return edges | f"{label}Norm0" >> beam.Map(cc.larger_first) | f"{label}Distinct0" >> beam.Distinct()


def one_round(edges, r: int, label: str = "CC"):
    """One large-star + small-star round. Returns (next edges, ("round-kk", n) with n > 0 the edges
    this round changed; empty when it changed nothing)."""
    current = (
        edges
        | f"{label}Directed{r}" >> beam.FlatMap(cc.both_directions)
        | f"{label}LargeGroup{r}" >> beam.GroupByKey()
        | f"{label}LargeStar{r}" >> beam.FlatMap(cc.large_star, r)
        | f"{label}ByLarger{r}" >> beam.Map(cc.larger_first)
        | f"{label}SmallGroup{r}" >> beam.GroupByKey()
        | f"{label}SmallStar{r}" >> beam.FlatMap(cc.small_star, r)
        | f"{label}Distinct{r}" >> beam.Distinct()
    )
    out = current | f"{label}Edges{r}" >> beam.Filter(lambda e: not cc.is_marker(e))
    changes = (
        current
        | f"{label}Markers{r}" >> beam.Filter(cc.is_marker)
        | f"{label}RoundKey{r}" >> beam.Map(_round_key)
        | f"{label}SumChanges{r}" >> beam.CombinePerKey(sum)
    )
    return out, changes


__all__ = ["SPILL_FILE_DOCS", "SpillFilesFn", "WriteEdgesFn", "files_of", "normalised_edges", "one_round",
           "read_edges", "spill_locations"]
