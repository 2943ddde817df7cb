"""Beam transforms of near-duplicate removal: thin wrappers around :mod:`dedupe.minhash` and
:mod:`dedupe.components`.

signatures → (band, band key) buckets → edges to each bucket's smallest member → optional exact
Jaccard verification (two joins with the documents' shingle sets) → connected components by
alternating large-star / small-star rounds → every document labelled with its cluster's smallest
member; the others are marked ``near_dedup:duplicate``.

Portable by construction: no side inputs, no tagged outputs, no state, few fork-and-joins (see
:mod:`dedupe.components` for why), and every group is streamed (two passes at most).
"""

from __future__ import annotations

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


def _shingle_set(doc, ngram: int, with_signature: bool):
    """(node, (shingle set, signature)); the signature only when candidates may be published
    documents, whose shingles are not stored (a refresh)."""
    if doc["_sig"] is not None:
        yield _node(doc), (np.unique(mh.shingle_hashes64(doc["text"], ngram)), doc["_sig"] if with_signature else None)


def _attach_first(item):
    """Group of node u: its shingle set and its edges (u, v) → (v, (u, shingles of u))."""
    u, tags = item
    sh_u = next(iter(tags["sh"]), None)
    if sh_u is None:
        return
    for v in tags["e"]:
        yield v, (u, sh_u)


def _verify(item, threshold: float):
    """Group of node v: its shingle set and (u, shingles of u) → the edge if Jaccard ≥ threshold."""
    v, tags = item
    sh_v = next(iter(tags["sh"]), None)
    if sh_v is None:
        return
    for u, sh_u in tags["e"]:
        if similarity(sh_u, sh_v) >= threshold:
            yield u, v


def similarity(a, b) -> float:
    """Exact Jaccard of the shingle sets when both are at hand; for a document of a published
    corpus (whose shingles are not stored) the MinHash estimate from the two signatures."""
    (sh_a, sig_a), (sh_b, sig_b) = a, b
    if sh_a is not None and sh_b is not None:
        return mh.jaccard(sh_a, sh_b)
    return float(np.mean(sig_a == sig_b))


def _normalised(edge):
    u, v = edge
    return (u, v) if u > v else (v, u)


def _label_docs(item):
    """Group of node n: the document(s) and at most one label → (cluster node, document)."""
    node, tags = item
    cluster = next(iter(tags["l"]), node)
    for doc in tags["d"]:
        yield cluster, doc


def _mark_cluster(item):
    """Group of one cluster (two passes: count, then mark) → documents with cluster_id and size;
    all but the smallest member marked ``near_dedup:duplicate``."""
    cluster, docs = item
    size = sum(1 for _ in docs) + cc.is_published(cluster)
    cluster_id = cc.node_id(cluster)
    for doc in docs:
        doc = {**doc, "cluster_id": cluster_id, "cluster_size": size}  # a copy: inputs are immutable
        if _node(doc) != cluster:
            why = "near_dedup:published_duplicate" if cc.is_published(cluster) else "near_dedup:duplicate"
            doc["reason"], doc["detail"] = why, cluster_id
        yield doc


def _round_key(marker):
    _, (r, _step, _node, n) = marker
    return f"round-{r:02d}", n


def connected_components(edges, max_rounds: int, label: str = "CC"):
    """Alternating large-star / small-star, ``max_rounds`` rounds in one linear chain.

    Returns (labels, changes): labels are (node, component minimum) for every node with an edge;
    changes are ("round-kk", n) for the rounds that changed n > 0 edges, so the driver can check
    that the last round changed nothing (converged) and say so if not.
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
        yield row["node"], (None, np.asarray(row["signature"], dtype=np.uint32))


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
        shingles = docs | f"{label}Shingles" >> beam.FlatMap(_shingle_set, cfg.ngram, published is not None)
        if published is not None:
            pub_sigs = published | f"{label}PublishedSignatures" >> beam.FlatMap(_published_signature)
            shingles = (shingles, pub_sigs) | f"{label}ShinglesWithPublished" >> beam.Flatten()
        first = {"sh": shingles, "e": edges} | f"{label}JoinFirst" >> beam.CoGroupByKey()
        halves = first | f"{label}AttachFirst" >> beam.FlatMap(_attach_first)
        second = {"sh": shingles, "e": halves} | f"{label}JoinSecond" >> beam.CoGroupByKey()
        edges = second | f"{label}Verify" >> beam.FlatMap(_verify, cfg.threshold)
    labels, changes = connected_components(edges, cfg.max_rounds, f"{label}CC")
    keyed = docs | f"{label}KeyDocs" >> beam.Map(lambda d: (_node(d), d))
    out = (
        {"d": keyed, "l": labels}
        | f"{label}JoinLabels" >> beam.CoGroupByKey()
        | f"{label}Label" >> beam.FlatMap(_label_docs)
        | f"{label}ClusterGroup" >> beam.GroupByKey()
        | f"{label}Mark" >> beam.FlatMap(_mark_cluster)
    )
    return out, changes
