"""Near-dedup as `gristmill corpus` runs it (pipelines/near_dedup.py: NearDedupEdges, cluster,
MarkNearDuplicates) equals an in-memory reference (datasketch MinHashLSH + union-find over the same
signatures) on the DirectRunner (on a two-host Dask cluster: tests/test_dask_cluster.py, the whole
corpus job); every grouping step reads its group once (a corpus of identical documents never sits in
one worker's memory)."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import tracemalloc
import zlib

import apache_beam as beam
import datasketch
import numpy as np
import pytest

from gristmill.config import NearDedupConfig, load_config
from gristmill.dedupe import components as cc
from gristmill.dedupe import minhash as mh
from gristmill.dedupe.beam import SPILL_FILE_DOCS
from gristmill.documents import new_document
from gristmill.pipelines import near_dedup as nd
from gristmill.pipelines.corpus import build_manifest

from .conftest import SAMPLE, shared

pytestmark = pytest.mark.slow


def reference_clusters(docs: list[dict], cfg: NearDedupConfig) -> dict[str, str]:
    """datasketch MinHashLSH over our signatures, every candidate pair verified, union-find."""
    bands, rows = mh.lsh_params(cfg)
    lsh = datasketch.MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
    nodes, shingles = [], {}
    for d in docs:
        node = cc.node_key(d["id"], d["source"])
        nodes.append(node)
        sig = mh.text_signature(d["text"], cfg.ngram, cfg.num_perm, cfg.seed)
        if sig is None:
            continue
        lsh.insert(node, datasketch.MinHash(hashvalues=sig, seed=cfg.seed, scheme=mh.SCHEME))
        shingles[node] = np.unique(mh.shingle_hashes64(d["text"], cfg.ngram))
    edges = []
    for node in shingles:
        text = docs[nodes.index(node)]["text"]
        sig = datasketch.MinHash(hashvalues=mh.text_signature(text, cfg.ngram, cfg.num_perm, cfg.seed), seed=cfg.seed,
                                 scheme=mh.SCHEME)
        for other in lsh.query(sig):
            if other != node and (not cfg.verify or mh.jaccard(shingles[node], shingles[other]) >= cfg.threshold):
                edges.append((node, other))
    return cc.union_find_components(nodes, edges)


def run_near_dedup(docs: list[dict], cfg: NearDedupConfig, beam_args: list[str],
                   spill_file_docs: int = SPILL_FILE_DOCS) -> list[dict]:
    out: list[dict] = []

    class Collect(beam.DoFn):  # results come back through a file: works on every runner
        def __init__(self, path):
            self.path = path

        def process(self, item):
            with open(self.path, "a") as f:
                f.write(json.dumps(item) + "\n")
            yield item

    import tempfile

    path = tempfile.mktemp(suffix=".jsonl")
    work_dir = tempfile.mkdtemp(prefix="near-dedup-")

    def write(marked):
        return (marked | beam.Map(lambda d: {k: d[k] for k in ("id", "source", "cluster_id", "cluster_size", "reason")})
                | beam.ParDo(Collect(path)))

    clustering = nd.near_dedup(lambda p: p | beam.Create(docs), write, cfg, work_dir, beam_args,
                               spill_file_docs=spill_file_docs)
    spilled = clustering.spill_files
    assert len(spilled) >= len(docs) / spill_file_docs, "the documents waited in spill files"
    assert not os.path.exists(work_dir)  # near_dedup removed its work directory
    with open(path) as f:
        out = [json.loads(line) for line in f]
    return out


def check_against_reference(docs, cfg, beam_args, spill_file_docs=SPILL_FILE_DOCS):
    ref = reference_clusters(docs, cfg)
    got = run_near_dedup(docs, cfg, beam_args, spill_file_docs)
    assert len(got) == len(docs)
    by_node = {cc.node_key(d["id"], d["source"]): d for d in got}
    sizes = {}
    for root in ref.values():
        sizes[root] = sizes.get(root, 0) + 1
    for node, root in ref.items():
        d = by_node[node]
        assert d["cluster_id"] == cc.node_id(root), node
        assert d["cluster_size"] == sizes[root]
        assert (d["reason"] is None) == (node == root)
    return sizes


@pytest.fixture(scope="module")
def gutenberg_docs():
    with gzip.open(shared("neardup/gutenberg_edition_clusters.jsonl.gz"), "rt", encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    return [{**new_document(r["id"], r["text"], "gutenberg"), "truth": r["cluster"]} for r in recs]


@pytest.fixture(scope="module")
def sample_docs():
    docs = []
    with open(shared("web/oscar2019_hf_dummy_multilingual.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            docs.append(new_document(r["id"], r["text"], "oscar"))
    with gzip.open(SAMPLE / "dolma-cc-main-2019-30.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            docs.append(new_document(f"dolma-{i:04d}", json.loads(line)["text"], "dolma"))
    return docs


def test_gutenberg_editions_cluster_as_labelled(gutenberg_docs):
    cfg = NearDedupConfig()
    sizes = check_against_reference(gutenberg_docs, cfg, ["--runner", "DirectRunner"])
    truth = {}
    for d in gutenberg_docs:
        truth.setdefault(d["truth"], set()).add(d["id"])
    assert sorted(sizes.values()) == sorted(len(v) for v in truth.values())


def test_web_sample_equals_reference_direct(sample_docs):
    sizes = check_against_reference(sample_docs, NearDedupConfig(), ["--runner", "DirectRunner"])
    assert any(s > 1 for s in sizes.values()), "OSCAR original/deduplicated variants are near duplicates"


def test_small_spill_files_give_the_same_clusters(sample_docs):
    check_against_reference(sample_docs, NearDedupConfig(), ["--runner", "DirectRunner"], spill_file_docs=7)


def test_web_sample_equals_reference_without_verification(sample_docs):
    check_against_reference(sample_docs, NearDedupConfig(verify=False, threshold=0.7), ["--runner", "DirectRunner"])


def test_all_identical_documents_form_one_cluster():
    text = "the miller ground the grain while the river turned the wheel of the old mill every day"
    docs = [new_document(f"doc-{i:05d}", text, "same") for i in range(2000)]
    got = run_near_dedup(docs, NearDedupConfig(), ["--runner", "DirectRunner"])
    kept = [d for d in got if d["reason"] is None]
    assert len(kept) == 1 and kept[0]["id"] == "doc-00000"
    assert {d["cluster_size"] for d in got} == {2000} and {d["cluster_id"] for d in got} == {"doc-00000"}


# --- the grouping steps stream: O(1) memory in the group size --------------------------------


class Streamed:
    """Grouped values as streaming runners hand them over: generated lazily, re-iterable."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return self.make()


def _peak_bytes(fn, item, *args) -> int:
    tracemalloc.start()
    for _ in fn(item, *args):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


N = 300_000


@pytest.mark.parametrize("step,args", [(cc.bucket_edges, ()), (cc.large_star, (1,)), (cc.small_star, (1,))])
def test_grouping_steps_hold_no_group_in_memory(step, args):
    group = Streamed(lambda: (f"node-{i:07d}" for i in range(1, N)))
    peak = _peak_bytes(step, ("node-0500000", group), *args)
    assert peak < 1_000_000, f"{step.__name__} held {peak} bytes for a group of {N}"


def test_exact_dedup_and_near_dedup_joins_stream_their_groups():
    from gristmill.dedupe.beam import _attach_first, _cluster_info, _verify
    from gristmill.pipelines.transforms import _keep_smallest

    docs = Streamed(lambda: ({**new_document(f"d{i:07d}", "same text", "s")} for i in range(N)))
    assert _peak_bytes(_keep_smallest, ("h", docs)) < 1_000_000
    members = Streamed(lambda: (cc.node_key(f"d{i:07d}", "s") for i in range(1, N)))
    assert _peak_bytes(_cluster_info, (cc.node_key("d0000000", "s"), members)) < 1_000_000
    # a node with many edges out and in, its text last; then the star centre receiving them all
    text = zlib.compress(" ".join(f"w{i}" for i in range(300)).encode(), 1)
    ends = Streamed(lambda: itertools.chain((("o", f"v{i:07d}") if i % 2 else ("i",) for i in range(N)),
                                           [("s", text, None)]))
    list(_attach_first(("u", [("i",), ("s", text, None)]), 5))  # first call: the word tables are built once
    assert _peak_bytes(_attach_first, ("u", ends), 5) < 1_000_000
    shingles = np.arange(200, dtype=np.uint64).tobytes()
    sets = Streamed(lambda: itertools.chain(((f"u{i:07d}", shingles, None) for i in range(N // 10)),
                                           [(None, shingles, None)]))
    assert _peak_bytes(_verify, ("v", sets), 0.8) < 1_000_000


# --- connected components -------------------------------------------------------------------------


def _graph():
    rng = np.random.RandomState(7)
    nodes = [f"n{i:04d}" for i in range(400)]
    edges = set()
    for _ in range(300):  # random sparse edges, plus a long path (large diameter)
        a, b = rng.choice(400, 2, replace=False)
        edges.add((nodes[a], nodes[b]))
    edges |= {(nodes[i], nodes[i + 1]) for i in range(100, 180)}
    return nodes, edges


def _write_first_round(output, edges):
    """Round 0 of the clustering as NearDedupEdges leaves it: the candidate edges in edge files, listed."""
    from gristmill.dedupe import rounds
    from gristmill.pipelines.runner import collect_stats, run_pipeline

    def build(p):
        files = (rounds.normalised_edges(p | beam.Create(sorted(edges)), "T")
                 | beam.ParDo(rounds.WriteEdgesFn(nd.round_dir(output, 0))))
        return collect_stats(nd.edges_stat(0), files, output)

    run_pipeline(build, ["--runner", "DirectRunner"])


@pytest.mark.parametrize("in_memory", [True, False])
def test_clustering_rounds_stop_when_converged(tmp_path, caplog, in_memory):
    """gristmill corpus's clustering (pipelines/near_dedup.cluster): one small pipeline per round, or the same
    rounds in the driver's memory for a small graph; the first round that changes nothing is the
    last; the labels equal union-find's (on a random graph with a long path)."""
    from gristmill.dedupe import rounds

    nodes, edges = _graph()
    output = str(tmp_path)
    _write_first_round(output, edges)
    cfg = load_config(None, ["near_dedup.max_rounds=12"])
    with caplog.at_level("INFO", logger="gristmill"):
        clustering = nd.cluster(output, cfg.near_dedup, ["--runner", "DirectRunner"],
                                in_memory_max_edges=10**6 if in_memory else 10)
    changed, label_files = clustering.rounds, clustering.label_files
    assert all(("in memory" if in_memory else "a pipeline") in m for m in caplog.messages if "changed" in m)
    labels = dict(itertools.chain.from_iterable(rounds.read_edges(f) for f in label_files))
    for node, root in cc.union_find_components(nodes, edges).items():
        assert labels.get(node, node) == root
    ran = [int(m.split()[3]) for m in caplog.messages if m.startswith("near-dedup clustering: round")]
    assert len(changed) >= 2 and ran == list(range(1, len(changed) + 2)), "every changing round, then one more"
    assert len(ran) < 12  # no pipeline for the rounds it did not need
    assert f"round {len(ran)} changed 0 edges" in caplog.messages[-1]
    assert [int(k.split("-")[1]) for k, _ in changed] == list(range(1, len(changed) + 1))
    # the manifest records the same figure as the one-pipeline form: rounds until one changed nothing
    stats = {"counts": {"read": 0, "kept": 0}, "files": [], "shards": [], "rejected_shards": [], "index_shards": [],
             "id_changes": [], "cc_rounds": changed}
    from gristmill.pipelines.corpus import InputPlan

    assert build_manifest(InputPlan(), stats, cfg)["near_dedup"]["rounds_to_converge"] == len(ran)


@pytest.mark.parametrize("in_memory", [True, False])
def test_clustering_rounds_that_do_not_converge_fail_the_run(tmp_path, in_memory):
    from gristmill.pipelines.corpus import InputPlan

    _, edges = _graph()
    output = str(tmp_path)
    _write_first_round(output, edges)
    cfg = load_config(None, ["near_dedup.max_rounds=2"])
    changed = nd.cluster(output, cfg.near_dedup, ["--runner", "DirectRunner"],
                         in_memory_max_edges=10**6 if in_memory else 10).rounds
    assert [k for k, _ in changed] == ["round-01", "round-02"]
    stats = {"counts": {"read": 0, "kept": 0}, "files": [], "shards": [], "rejected_shards": [], "index_shards": [],
             "id_changes": [], "cc_rounds": changed}
    with pytest.raises(RuntimeError, match=r"did not converge in 2 rounds"):
        build_manifest(InputPlan(), stats, cfg)


def test_non_convergence_is_a_clear_error():
    cfg = load_config(None, ["near_dedup.max_rounds=3"])
    stats = {
        "counts": {"read": 1, "kept": 1, "lang_kept\x00en": 1},
        "files": [{"documents": 1, "source": "a.jsonl"}],
        "shards": [], "rejected_shards": [], "index_shards": [], "id_changes": [],
        "cc_rounds": [["round-01", 10], ["round-02", 4], ["round-03", 1]],
    }
    from gristmill.pipelines.corpus import InputPlan

    with pytest.raises(RuntimeError, match=r"did not converge in 3 rounds.*near_dedup.max_rounds"):
        build_manifest(InputPlan(), stats, cfg)
    stats["cc_rounds"] = stats["cc_rounds"][:2]
    assert build_manifest(InputPlan(), stats, cfg)["near_dedup"]["rounds_to_converge"] == 3


def test_config_rejects_half_overridden_lsh_params():
    from gristmill.config import ConfigError

    with pytest.raises(ConfigError, match="bands"):
        load_config(None, ["near_dedup.rows=10"])
    assert load_config(None, ["near_dedup.bands=16", "near_dedup.rows=16"]).near_dedup.rows == 16


def test_itertools_pairs_in_small_buckets():
    members = [f"m{i}" for i in range(5)]
    edges = set(cc.bucket_edges(("k", members)))
    assert edges == {(b, a) for a, b in itertools.combinations(members, 2)}


def test_in_memory_rounds_count_the_changes_the_pipelines_count(tmp_path):
    """The manifest's rounds_to_converge must not depend on where the rounds ran."""

    _, edges = _graph()
    got = {}
    for in_memory in (True, False):
        output = str(tmp_path / str(in_memory))
        _write_first_round(output, edges)
        got[in_memory] = nd.cluster(output, load_config(None, ["near_dedup.max_rounds=12"]).near_dedup,
                                    ["--runner", "DirectRunner"], 10**6 if in_memory else 10).rounds
    assert got[True] == got[False] and len(got[True]) >= 2
