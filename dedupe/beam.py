"""Beam transforms of near-duplicate removal: thin wrappers around :mod:`~gristmill.dedupe.minhash` and
:mod:`~gristmill.dedupe.components`.

signatures → (band, band key) buckets → edges to each bucket's smallest member → optional exact
Jaccard verification (one join of the edges with the documents' compressed texts, one group of the
candidates' shingle sets) → connected components by alternating large-star / small-star rounds
(:mod:`~gristmill.dedupe.rounds`; pipelines/near_dedup.py runs the whole) →
cluster sizes from the labels alone → (cluster, size) routed to the spill file holding each
document → each file's documents marked: all but each cluster's smallest member are
``near_dedup:duplicate``.

The documents themselves never sit in a group: right after signing they are packed into spill
files and only (node, file) travels. Everything grouped is light (node names, band keys, compressed
texts, edges), which is the least data to shuffle on a distributed runner and what bounds the
memory of runners that keep grouped data in memory (the DirectRunner holds each group's values as
Python objects until the next stage has consumed them).

Portable by construction: no side inputs, no tagged outputs, no state, few fork-and-joins (see
:mod:`~gristmill.dedupe.components` for why), and every group is streamed (two passes at most) except a spill
file's labels (at most ``SPILL_FILE_DOCS``).
"""

from __future__ import annotations

import uuid
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa

from gristmill import io
from gristmill.dedupe import components as cc
from gristmill.dedupe import minhash as mh
from gristmill.documents import pack_document, unpack_document


def _node(doc) -> str:
    return cc.node_key(doc["id"], doc["source"])


def sign(doc, ngram: int, num_perm: int, seed: int, bands: int, rows: int):
    """The document (a copy) with its signature and band keys; None for both when it is shorter
    than one shingle (exact dedup only)."""
    sig = mh.text_signature(doc["text"], ngram, num_perm, seed)
    keys = None if sig is None else mh.band_keys(sig, bands, rows)
    return {**doc, "_sig": sig, "_band_keys": keys}


def _bucket_entries(doc):
    if doc["_band_keys"] is not None:
        node = _node(doc)
        for band, key in enumerate(doc["_band_keys"]):
            yield (band, key), node


# --- verification: tagged values of one join keyed by node -----------------------------------------
# ("s", text, signature): the node's text (zlib-compressed UTF-8: a third to a half of its shingle
#   set's size; None for a published document) and its signature (only when candidates may be
#   published documents, whose text is not stored: a refresh). Only the candidates' shingle sets
#   are computed, once each, in the first join.
# ("o", v): an edge from the node to the smaller node v;  ("i",): an edge into the node

_IN = ("i",)


def _text_value(doc, with_signature: bool):
    if doc["_sig"] is not None:
        yield _node(doc), ("s", zlib.compress(doc["text"].encode("utf-8"), 1), doc["_sig"] if with_signature else None)


def _edge_ends(edge):
    u, v = edge
    yield u, ("o", v)
    yield v, _IN


def _attach_first(item, ngram: int):
    """Group of node u: its text, its edges out (u, v) and in. Sends its shingle set along every
    edge out, (v, (u, set)), and to itself, (u, (None, set)), when some edge comes in. Two passes,
    holding one text and one set."""
    u, values = item
    own, has_in, has_out = None, False, False
    for value in values:
        if value[0] == "s":
            own = own or value
        elif value[0] == "i":
            has_in = True
        else:
            has_out = True
    if own is None or not (has_in or has_out):
        return
    _, text, sig = own
    shingles = None
    if text is not None:
        shingles = np.unique(mh.shingle_hashes64(zlib.decompress(text).decode("utf-8"), ngram)).tobytes()
    if has_in:
        yield u, (None, shingles, sig)
    for value in values:
        if value[0] == "o":
            yield value[1], (u, shingles, sig)


def _verify(item, threshold: float):
    """Group of node v: its own set and (u, set of u) per edge in → the edges whose Jaccard
    similarity reaches the threshold. Two passes, holding v's set and one other."""
    v, values = item
    own = next((x for x in values if x[0] is None), None)
    if own is None:
        return
    mine = _unpack_set(own)
    for value in values:
        if value[0] is not None and similarity(_unpack_set(value), mine) >= threshold:
            yield value[0], v


def _unpack_set(value):
    _, shingles, sig = value
    return (None if shingles is None else np.frombuffer(shingles, dtype=np.uint64)), sig


def similarity(a, b) -> float:
    """Exact Jaccard of the shingle sets when both are at hand; for a document of a published
    corpus (whose shingles are not stored) the MinHash estimate from the two signatures."""
    (sh_a, sig_a), (sh_b, sig_b) = a, b
    if sh_a is not None and sh_b is not None:
        return mh.jaccard(sh_a, sh_b, sorted_unique=True)  # _attach_first sends np.unique's output
    return float(np.mean(sig_a == sig_b))


# --- labels → clusters → documents ----------------------------------------------------------------


def _by_cluster(label):
    node, cluster = label
    return cluster, node


def _cluster_info(item):
    """Group of one cluster (its members other than the minimum; two passes: count, then emit) →
    (member, (cluster, size)) for every member that is a new document, the minimum included. The
    size counts the new documents and the minimum (a published minimum is the one published
    document counted: the one they duplicate)."""
    cluster, members = item
    size = 1 + sum(1 for n in members if not cc.is_published(n))
    info = ("c", cluster, size)
    if not cc.is_published(cluster):
        yield cluster, info
    for node in members:
        if not cc.is_published(node):
            yield node, info


#: documents per spill file: bounds what the final step holds (their labels) per group
SPILL_FILE_DOCS = 4096


class SpillFilesFn(beam.DoFn):
    """Writes the documents, packed, to temporary Arrow files of at most ``docs_per_file`` as they
    arrive, and outputs each file's path once, with its first document: the documents wait on disk,
    not in the runner, until their clusters are known, and the nodes are read back from the files
    (:func:`spill_locations`). A file is written (atomically) before its bundle's outputs are
    committed, so every file named downstream exists; a retried bundle leaves an unnamed orphan,
    removed with the directory."""

    def __init__(self, spill_dir: str, docs_per_file: int = SPILL_FILE_DOCS):
        self.spill_dir, self.docs_per_file = spill_dir, docs_per_file

    def start_bundle(self):
        self._path, self._nodes, self._docs = None, [], []

    def process(self, doc):
        if self._path is None:
            self._path = io.join(self.spill_dir, f"{uuid.uuid4().hex}.arrow")
            yield self._path
        self._nodes.append(_node(doc))
        self._docs.append(pack_document(doc))
        if len(self._nodes) >= self.docs_per_file:
            self._flush()

    def finish_bundle(self):
        if self._nodes:
            self._flush()

    def _flush(self):
        table = pa.table({"node": pa.array(self._nodes, pa.string()), "doc": pa.array(self._docs, pa.binary())})
        io.write_bytes_atomic(self._path, io.table_bytes(table, "file", io.WORK_COMPRESSION))
        self._path, self._nodes, self._docs = None, [], []


def spill_locations(path: str):
    """One spill file → (node, ("f", path)) for each document in it."""
    for batch in io.iter_batches(path, ["node"]):
        for node in batch.column("node").to_pylist():
            yield node, ("f", path)


def _route_to_file(item):
    """Group of node n: the file(s) holding its document(s) and at most one ("c", cluster, size) →
    (file, (n, cluster, size)); cluster None for a document in no cluster."""
    node, values = item
    cluster, size = next(((v[1], v[2]) for v in values if v[0] == "c"), (None, 1))
    for value in values:
        if value[0] == "f":
            yield value[1], (node, cluster, size)


def _mark_file(item):
    """Group of one spill file: (node, cluster, size) for each of its documents (at most
    ``SPILL_FILE_DOCS`` held) → its documents with ``cluster_id``/``cluster_size``; all but each
    cluster's smallest member marked as duplicates (of a published document when the cluster's
    minimum is one). A document in no cluster is its own: its id, size 1."""
    path, labels = item
    clusters = {node: (cluster or node, size) for node, cluster, size in labels}
    for batch in io.iter_batches(path):
        for node, packed in zip(batch.column("node").to_pylist(), batch.column("doc").to_pylist()):
            cluster, size = clusters[node]
            doc = unpack_document(packed)
            doc["cluster_id"], doc["cluster_size"] = cc.node_id(cluster), size
            if node != cluster:
                doc["reason"] = "near_dedup:published_duplicate" if cc.is_published(cluster) else "near_dedup:duplicate"
                doc["detail"] = doc["cluster_id"]
            yield doc


def _round_key(marker):
    _, (r, _step, _node, n) = marker
    return f"round-{r:02d}", n


def star_round(edges, r: int, label: str):
    """One large-star + small-star round over (u, v) edges; the change markers of earlier rounds
    pass through, this round's join them (dedupe/components.py)."""
    return (
        edges
        | f"{label}Directed{r}" >> beam.FlatMap(cc.both_directions)
        | f"{label}LargeGroup{r}" >> beam.GroupByKey()
        | f"{label}LargeStar{r}" >> beam.FlatMap(cc.large_star, r)
        | f"{label}ByLarger{r}" >> beam.Map(cc.larger_first)
        | f"{label}SmallGroup{r}" >> beam.GroupByKey()
        | f"{label}SmallStar{r}" >> beam.FlatMap(cc.small_star, r)
        | f"{label}Distinct{r}" >> beam.Distinct()
    )


def split_markers(current, label: str, suffix: str = ""):
    """Edges with markers → (the edges, ("round-kk", n) summed per round that changed n > 0 edges)."""
    labels = current | f"{label}Labels{suffix}" >> beam.Filter(lambda e: not cc.is_marker(e))
    changes = (
        current
        | f"{label}Markers{suffix}" >> beam.Filter(cc.is_marker)
        | f"{label}RoundKey{suffix}" >> beam.Map(_round_key)
        | f"{label}SumChanges{suffix}" >> beam.CombinePerKey(sum)
    )
    return labels, changes


def _published_buckets(row):
    for band, key in enumerate(row["band_keys"] or ()):
        yield (band, key), row["node"]


def _published_signature(row):
    if row["signature"] is not None:
        yield row["node"], ("s", None, np.asarray(row["signature"], dtype=np.uint32))


def candidate_edges(docs, cfg, published=None, label: str = "NearDedup", signed: bool = False):
    """Returns (signed documents, candidate edges): every document with its signature and band
    keys, and the distinct (larger, smaller) node pairs that share a band key and (with
    ``cfg.verify``) reach the Jaccard threshold — the graph whose components are the clusters.
    ``signed``: the documents already carry ``_sig``/``_band_keys`` made with ``cfg`` (:func:`sign`)."""
    bands, rows = mh.lsh_params(cfg)
    if not signed:
        docs = docs | f"{label}Sign" >> beam.Map(sign, cfg.ngram, cfg.num_perm, cfg.seed, bands, rows)
    entries = docs | f"{label}BandKeys" >> beam.FlatMap(_bucket_entries)  # ((band, key), node)
    if published is not None:
        pub_entries = published | f"{label}PublishedBands" >> beam.FlatMap(_published_buckets)
        entries = (entries, pub_entries) | f"{label}WithPublished" >> beam.Flatten()
    edges = (
        entries
        | f"{label}Buckets" >> beam.GroupByKey()
        | f"{label}BucketEdges" >> beam.FlatMap(cc.bucket_edges, cfg.bucket_all_pairs_max)
        | f"{label}DistinctCandidates" >> beam.Distinct()
    )
    if cfg.verify:
        sets = docs | f"{label}Texts" >> beam.FlatMap(_text_value, published is not None)
        if published is not None:
            pub_sigs = published | f"{label}PublishedSignatures" >> beam.FlatMap(_published_signature)
            sets = (sets, pub_sigs) | f"{label}TextsWithPublished" >> beam.Flatten()
        ends = edges | f"{label}EdgeEnds" >> beam.FlatMap(_edge_ends)
        edges = (
            (sets, ends)
            | f"{label}TextsAndEdges" >> beam.Flatten()
            | f"{label}JoinFirst" >> beam.GroupByKey()
            | f"{label}AttachFirst" >> beam.FlatMap(_attach_first, cfg.ngram)
            | f"{label}JoinSecond" >> beam.GroupByKey()
            | f"{label}Verify" >> beam.FlatMap(_verify, cfg.threshold)
        )
    return docs, edges


def mark_documents(labels, locations, label: str = "NearDedup"):
    """(node, component minimum) labels + (node, ("f", spill file)) locations → the spilled
    documents with ``cluster_id``/``cluster_size``, all but each cluster's smallest member marked."""
    clusters = (
        labels
        | f"{label}ByCluster" >> beam.Map(_by_cluster)
        | f"{label}ClusterGroup" >> beam.GroupByKey()
        | f"{label}ClusterInfo" >> beam.FlatMap(_cluster_info)
    )
    return (
        (locations, clusters)
        | f"{label}LocationsAndClusters" >> beam.Flatten()
        | f"{label}JoinClusters" >> beam.GroupByKey()
        | f"{label}RouteToFiles" >> beam.FlatMap(_route_to_file)
        | f"{label}FileGroup" >> beam.GroupByKey()
        | f"{label}Mark" >> beam.FlatMap(_mark_file)
    )
