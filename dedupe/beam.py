"""Beam transforms of near-duplicate removal: thin wrappers around :mod:`dedupe.minhash` and
:mod:`dedupe.components`.

signatures → (band, band key) buckets → edges to each bucket's smallest member → optional exact
Jaccard verification (one join of the edges with the documents' shingle sets, one group of the
candidates' sets) → connected components by alternating large-star / small-star rounds → cluster
sizes from the labels alone → one join of the documents with their cluster; all but the cluster's
smallest member are marked ``near_dedup:duplicate``.

Only light records (node names, band keys, shingle sets) travel through the dedup's groups; each
document passes through exactly one group, packed into one compressed byte string. That is what
bounds the memory of runners that keep grouped data in memory (the DirectRunner keeps every group's
values as Python objects until the next stage has consumed them), and it is also the least data to
shuffle on a distributed one.

Portable by construction: no side inputs, no tagged outputs, no state, few fork-and-joins (see
:mod:`dedupe.components` for why), and every group is streamed (two passes at most).
"""

from __future__ import annotations

import pickle
import zlib

import apache_beam as beam
import numpy as np

from dedupe import components as cc
from dedupe import minhash as mh


def _node(doc) -> str:
    return cc.node_key(doc["id"], doc["source"])


def _sign(doc, ngram: int, num_perm: int, seed: int, bands: int, rows: int):
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
        return mh.jaccard(sh_a, sh_b)
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


def pack_document(doc) -> bytes:
    """A document as one compressed byte string: what it costs to hold and shuffle (a grouped
    document dict is several times larger as Python objects on the DirectRunner)."""
    return zlib.compress(pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack_document(data: bytes) -> dict:
    return pickle.loads(zlib.decompress(data))


def _keyed_packed(doc):
    return _node(doc), ("d", pack_document(doc))


def _mark_documents(item):
    """Group of node n: its document(s) and at most one ("c", cluster, size) → the documents with
    ``cluster_id``/``cluster_size``; all but the cluster's smallest member marked as duplicates
    (of a published document when the cluster's minimum is one). A document in no cluster is its
    own: its id, size 1. Two passes, holding one document."""
    node, values = item
    cluster, size = next(((v[1], v[2]) for v in values if v[0] == "c"), (node, 1))
    cluster_id = cc.node_id(cluster)
    for value in values:
        if value[0] != "d":
            continue
        doc = unpack_document(value[1])
        doc["cluster_id"], doc["cluster_size"] = cluster_id, size
        if node != cluster:
            doc["reason"] = "near_dedup:published_duplicate" if cc.is_published(cluster) else "near_dedup:duplicate"
            doc["detail"] = cluster_id
        yield doc


def _round_key(marker):
    _, (r, _step, _node, n) = marker
    return f"round-{r:02d}", n


def connected_components(edges, max_rounds: int, label: str = "CC"):
    """Alternating large-star / small-star, ``max_rounds`` rounds in one linear chain.

    Returns (labels, changes): labels are (node, component minimum) for every node with an edge
    but the minimum; changes are ("round-kk", n) for the rounds that changed n > 0 edges, so the
    driver can check that the last round changed nothing (converged) and say so if not.
    """
    current = edges | f"{label}Norm0" >> beam.Map(cc.larger_first) | f"{label}Distinct0" >> beam.Distinct()
    for r in range(1, max_rounds + 1):
        current = (
            current
            | f"{label}Directed{r}" >> beam.FlatMap(cc.both_directions)
            | f"{label}LargeGroup{r}" >> beam.GroupByKey()
            | f"{label}LargeStar{r}" >> beam.FlatMap(cc.large_star, r)
            | f"{label}ByLarger{r}" >> beam.Map(cc.larger_first)
            | f"{label}SmallGroup{r}" >> beam.GroupByKey()
            | f"{label}SmallStar{r}" >> beam.FlatMap(cc.small_star, r)
            | f"{label}Distinct{r}" >> beam.Distinct()
        )
    labels = current | f"{label}Labels" >> beam.Filter(lambda e: not cc.is_marker(e))
    changes = (
        current
        | f"{label}Markers" >> beam.Filter(cc.is_marker)
        | f"{label}RoundKey" >> beam.Map(_round_key)
        | f"{label}SumChanges" >> beam.CombinePerKey(sum)
    )
    return labels, changes


def _published_buckets(row):
    for band, key in enumerate(row["band_keys"] or ()):
        yield (band, key), row["node"]


def _published_signature(row):
    if row["signature"] is not None:
        yield row["node"], ("s", None, np.asarray(row["signature"], dtype=np.uint32))


def near_dedup(docs, cfg, label: str = "NearDedup", published=None):
    """Returns (documents with cluster_id/cluster_size, near duplicates marked; round changes).

    ``published``: index rows of a published corpus (refresh). Its documents join the buckets and
    the clustering but are never output; a new document clustered with one is marked
    ``near_dedup:published_duplicate``. Their signatures stand in for their shingles when a
    candidate pair is verified (estimated instead of exact Jaccard): a refresh never reads or
    re-signs the published text.
    """
    bands, rows = cfg.lsh_params()
    docs = docs | f"{label}Sign" >> beam.Map(_sign, cfg.ngram, cfg.num_perm, cfg.seed, bands, rows)
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
    labels, changes = connected_components(edges, cfg.max_rounds, f"{label}CC")
    clusters = (
        labels
        | f"{label}ByCluster" >> beam.Map(_by_cluster)
        | f"{label}ClusterGroup" >> beam.GroupByKey()
        | f"{label}ClusterInfo" >> beam.FlatMap(_cluster_info)
    )
    packed = docs | f"{label}PackDocs" >> beam.Map(_keyed_packed)
    out = (
        (packed, clusters)
        | f"{label}DocsAndClusters" >> beam.Flatten()
        | f"{label}JoinClusters" >> beam.GroupByKey()
        | f"{label}Mark" >> beam.FlatMap(_mark_documents)
    )
    return out, changes
