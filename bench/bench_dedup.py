"""Near-dedup benchmarks: quality (P/R/F1 of duplicate pairs against exact Jaccard), signature
speed (gristmill vs datasketch vs datatrove) and scale (the whole Beam near_dedup stage at 10k to 1M
documents). See bench/DEDUP.md for the commands and the measured numbers.

    .venv/bin/python bench/bench_dedup.py quality [--json out.json]
    .venv/bin/python bench/bench_dedup.py speed   [--docs 1500] [--repeat 3]
    .venv/bin/python bench/bench_dedup.py scale   --n 10000 100000 1000000 [--time-limit 2400] [--mem-limit-gb 18]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling bench modules (gristmill itself is installed)
logging.getLogger("root").setLevel(logging.ERROR)  # Beam's GCS/apitools import warnings

import bench_dedup_data as data  # noqa: E402
import numpy as np  # noqa: E402

from gristmill.config import NearDedupConfig  # noqa: E402
from gristmill.dedupe import components as cc  # noqa: E402
from gristmill.dedupe import minhash as mh  # noqa: E402
from gristmill.documents import new_document  # noqa: E402

DATATROVE_PY = HERE / ".venv-bench/bin/python"  # the other helper's venv (read-only use)
WORK = Path(os.environ.get("DEDUP_BENCH_WORK", "/tmp/gristmill-dedup-bench"))


# =============================================================================================
# helpers
# =============================================================================================


def prf(pred: set, truth: set) -> dict:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"P": p, "R": r, "F1": f, "tp": tp, "pred": len(pred), "truth": len(truth)}


def fmt(m: dict) -> str:
    return f"P={m['P']:.4f} R={m['R']:.4f} F1={m['F1']:.4f} (tp={m['tp']}, pred={m['pred']}, truth={m['truth']})"


def shingle_sets(texts, n: int) -> list[np.ndarray]:
    return [np.unique(mh.shingle_hashes64(t, n)) for t in texts]


def exact_jaccard_pairs(sets: list[np.ndarray]) -> dict[tuple[int, int], float]:
    """Exact Jaccard of every pair of documents sharing at least one shingle (i < j), via a sparse
    document × shingle matrix product (intersection sizes)."""
    from scipy import sparse

    sizes = np.array([s.size for s in sets], dtype=np.int64)
    allh = np.concatenate(sets) if sets else np.empty(0, np.uint64)
    _, cols = np.unique(allh, return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), sizes)
    n_cols = int(cols.max(initial=-1)) + 1
    m = sparse.csr_matrix((np.ones(cols.size, dtype=np.int32), (rows, cols)), shape=(len(sets), n_cols))
    inter = sparse.triu(m @ m.T, k=1).tocoo()
    j = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    return {(int(a), int(b)): float(x) for a, b, x in zip(inter.row, inter.col, j)}


def pairs_of_groups(labels: list) -> set[tuple[int, int]]:
    """Pairs (i < j) with equal labels."""
    groups = defaultdict(list)
    for i, lab in enumerate(labels):
        groups[lab].append(i)
    out = set()
    for members in groups.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                out.add((members[a], members[b]))
    return out


def components_of(n: int, edges) -> list[int]:
    nodes = [f"{i:08d}" for i in range(n)]
    comp = cc.union_find_components(nodes, ((nodes[a], nodes[b]) for a, b in edges))
    return [int(comp[x]) for x in nodes]


def all_pairs_max(cfg: NearDedupConfig) -> int:
    return getattr(cfg, "bucket_all_pairs_max", cc.ALL_PAIRS_MAX)


def bucket_edges(item, max_members: int):
    """components.bucket_edges with a given all-pairs limit (parameter or module constant)."""
    import inspect

    if "all_pairs_max" in inspect.signature(cc.bucket_edges).parameters:
        return list(cc.bucket_edges(item, max_members))
    saved, cc.ALL_PAIRS_MAX = cc.ALL_PAIRS_MAX, max_members
    try:
        return list(cc.bucket_edges(item))
    finally:
        cc.ALL_PAIRS_MAX = saved


def lsh_replica(docs: list[dict], cfg: NearDedupConfig, jac: dict, max_members: int | None = None) -> tuple[set, set]:
    """The candidate and verified edges near_dedup builds (same signatures, band keys, bucket
    rule and threshold), computed in memory so edge-level metrics are available; pairs as (i, j)
    document indices, i < j."""
    bands, rows = mh.lsh_params(cfg)
    max_members = all_pairs_max(cfg) if max_members is None else max_members
    node_index = {cc.node_key(d["id"], d["source"]): i for i, d in enumerate(docs)}
    buckets = defaultdict(list)
    for d in docs:
        sig = d.get("_sig_cache")
        if sig is None:
            sig = d["_sig_cache"] = mh.text_signature(d["text"], cfg.ngram, cfg.num_perm, cfg.seed)
        if sig is None:
            continue
        for band, key in enumerate(mh.band_keys(sig, bands, rows)):
            buckets[(band, key)].append(cc.node_key(d["id"], d["source"]))
    cand = set()
    for item in buckets.items():
        for u, v in bucket_edges(item, max_members):
            a, b = node_index[u], node_index[v]
            cand.add((min(a, b), max(a, b)))
    verified = {e for e in cand if jac.get(e, 0.0) >= cfg.threshold}
    return cand, verified


def beam_near_dedup(docs: list[dict], cfg: NearDedupConfig, beam_args=("--runner", "DirectRunner")) -> list[dict]:
    """gristmill's near_dedup on Beam; returns id, source, cluster_id, cluster_size, reason per doc."""
    import apache_beam as beam

    from gristmill.pipelines.near_dedup import near_dedup

    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)

    class Collect(beam.DoFn):
        def __init__(self, path):
            self.path = path

        def process(self, d):
            with open(self.path, "a") as f:
                f.write(json.dumps({k: d[k] for k in ("id", "source", "cluster_id", "cluster_size", "reason")}) + "\n")

    inputs = [{k: v for k, v in d.items() if not k.startswith("_")} for d in docs]
    # what gristmill corpus runs: NearDedupEdges, the rounds until converged, MarkNearDuplicates
    near_dedup(lambda p: p | beam.Create(inputs, reshuffle=False), lambda marked: marked | beam.ParDo(Collect(path)),
               cfg, tempfile.mkdtemp(prefix="near-dedup-"), list(beam_args))
    with open(path) as f:
        out = [json.loads(line) for line in f]
    os.unlink(path)
    return out


# =============================================================================================
# quality
# =============================================================================================

CONFIGS = [
    ("verify, w=(0.5,0.5)", dict(verify=True, lsh_weights=(0.5, 0.5))),
    ("verify, w=(0.3,0.7)", dict(verify=True, lsh_weights=(0.3, 0.7))),
    ("verify, w=(0.1,0.9)", dict(verify=True, lsh_weights=(0.1, 0.9))),
    ("no verify, w=(0.5,0.5)", dict(verify=False, lsh_weights=(0.5, 0.5))),
    ("no verify, w=(0.3,0.7)", dict(verify=False, lsh_weights=(0.3, 0.7))),
    ("no verify, w=(0.1,0.9)", dict(verify=False, lsh_weights=(0.1, 0.9))),
]

QUICK = [("config defaults", {})]

BINS = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0001]


def evaluate(name: str, docs: list[dict], threshold: float, labels: list | None = None, configs=CONFIGS) -> dict:
    """All metrics of one dataset under each configuration (Beam near_dedup + in-memory replica)."""
    n = len(docs)
    t0 = time.perf_counter()
    sets = shingle_sets([d["text"] for d in docs], 5)
    jac = exact_jaccard_pairs(sets)
    truth = {e for e, j in jac.items() if j >= threshold}
    truth_comp_pairs = pairs_of_groups(components_of(n, truth))
    truth_docs = {i for e in truth for i in e}
    print(f"\n=== {name}: {n} documents, {len(jac)} pairs sharing a shingle, {len(truth)} pairs with exact "
          f"5-gram Jaccard >= {threshold} ({len(truth_comp_pairs)} pairs in their transitive closure); "
          f"ground truth in {time.perf_counter() - t0:.1f}s")
    hist = np.histogram([j for j in jac.values() if j >= 0.5], bins=BINS)[0]
    bins = (f"[{a:.2f},{min(b, 1):.2f}{']' if b > 1 else ')'}: {c}" for a, b, c in zip(BINS, BINS[1:], hist))
    print("pairs by Jaccard bin:", ", ".join(bins))
    results = {"dataset": name, "documents": n, "truth_pairs": len(truth), "truth_closure_pairs": len(truth_comp_pairs),
               "jaccard_hist": dict(zip([f"{b:.2f}" for b in BINS[:-1]], hist.tolist())), "configs": {}}
    if labels is not None:
        results["label_pairs"] = len(pairs_of_groups(labels))
    for cname, overrides in configs:
        cfg = NearDedupConfig(threshold=threshold, **overrides)
        bands, rows = mh.lsh_params(cfg)
        default = NearDedupConfig(threshold=threshold, verify=cfg.verify)
        if mh.lsh_params(default) == (bands, rows) and all_pairs_max(default) == all_pairs_max(cfg):
            cname += " [default]"
        t0 = time.perf_counter()
        got = beam_near_dedup(docs, cfg)
        beam_s = time.perf_counter() - t0
        by_node = {cc.node_key(g["id"], g["source"]): g for g in got}
        assert len(by_node) == n, (len(by_node), n)
        cluster = [by_node[cc.node_key(d["id"], d["source"])]["cluster_id"] for d in docs]
        same_cluster = pairs_of_groups(cluster)
        cand, verified = lsh_replica(docs, cfg, jac)
        edges = verified if cfg.verify else cand
        replica = components_of(n, edges)
        cand_all, verified_all = lsh_replica(docs, cfg, jac, max_members=10**9)  # every bucket all pairs
        edges_all = verified_all if cfg.verify else cand_all
        all_pairs_cluster = pairs_of_groups(components_of(n, edges_all))
        consistent = pairs_of_groups(replica) == same_cluster
        removed = {i for i, d in enumerate(docs)
                   if by_node[cc.node_key(d["id"], d["source"])]["reason"] == "near_dedup:duplicate"}
        flagged = {i for i, d in enumerate(docs) if by_node[cc.node_key(d["id"], d["source"])]["cluster_size"] > 1}
        m = {
            "bands": bands, "rows": rows, "all_pairs_max": all_pairs_max(cfg), "beam_seconds": round(beam_s, 2),
            "replica_equals_beam": consistent,
            "candidates": len(cand), "candidates_true": len(cand & truth),
            "edges": prf(edges, truth),
            "same_cluster": prf(same_cluster, truth),
            "same_cluster_vs_closure": prf(same_cluster, truth_comp_pairs),
            "docs_in_dup_cluster": prf(flagged, truth_docs),
            "docs_removed": len(removed),
        }
        if edges_all != edges:
            m["edges_if_all_pairs_buckets"] = prf(edges_all, truth)
            m["same_cluster_vs_closure_if_all_pairs_buckets"] = prf(all_pairs_cluster, truth_comp_pairs)
        if labels is not None:
            m["same_cluster_vs_labels"] = prf(same_cluster, pairs_of_groups(labels))
        # recall of the edges by Jaccard bin, next to the S-curve's candidate probability
        by_bin = []
        for a, b in zip(BINS[:-1], BINS[1:]):
            inbin = {e for e, j in jac.items() if a <= j < b}
            if inbin:
                mid = (a + min(b, 1.0)) / 2
                p_candidate = float(mh.candidate_probability(mid, bands, rows))
                by_bin.append((f"{a:.2f}", len(inbin), len(inbin & cand) / len(inbin), p_candidate))
        m["candidate_rate_by_bin"] = by_bin
        results["configs"][cname] = m
        print(f"-- {cname}: {bands} bands x {rows} rows; Beam DirectRunner {beam_s:.1f}s; "
              f"replica == Beam clusters: {consistent}")
        print(f"   edges ({'verified' if cfg.verify else 'candidates'}) vs truth pairs : {fmt(m['edges'])}")
        print(f"   same-cluster pairs vs truth pairs      : {fmt(m['same_cluster'])}")
        print(f"   same-cluster pairs vs truth closure    : {fmt(m['same_cluster_vs_closure'])}")
        print(f"   docs in a dup cluster vs docs with a true partner: {fmt(m['docs_in_dup_cluster'])}")
        if labels is not None:
            print(f"   same-cluster pairs vs labelled clusters: {fmt(m['same_cluster_vs_labels'])}")
        if "edges_if_all_pairs_buckets" in m:
            print(f"   [if buckets > {all_pairs_max(cfg)} yielded all pairs] edges: "
                  f"{fmt(m['edges_if_all_pairs_buckets'])}")
            print(f"   [if buckets > {all_pairs_max(cfg)} yielded all pairs] same-cluster vs closure: "
                  f"{fmt(m['same_cluster_vs_closure_if_all_pairs_buckets'])}")
        print("   candidate rate by Jaccard bin (observed / S-curve at bin middle): "
              + ", ".join(f"{b}:{r:.2f}/{p:.2f} (n={k})" for b, k, r, p in by_bin))
    return results


def cmd_quality(args) -> dict:
    out = {}
    # (a) Gutenberg editions
    recs = data.gutenberg_editions()
    docs = [new_document(r["id"], r["text"], "gutenberg") for r in recs]
    out["gutenberg"] = evaluate("Gutenberg editions (25 books, 4 labelled clusters)", docs, args.threshold,
                                labels=[r["cluster"] for r in recs], configs=CONFIGS if not args.quick else QUICK)
    # (b) controlled edits
    ce = data.controlled_edit_set(seed=args.seed, big_family=0)
    docs = [{**new_document(d["id"], d["text"], "edits"), "family": d["family"]} for d in ce]
    n_base = sum(d["parent"] is None for d in ce)
    out["controlled"] = evaluate(f"Controlled edits (seed {args.seed}: {n_base} real base docs + "
                                 f"{len(ce) - n_base} edited variants)", docs, args.threshold,
                                 configs=CONFIGS if not args.quick else QUICK)
    # (c) one large family: buckets beyond ALL_PAIRS_MAX are stars, verified against their smallest member only
    if not args.quick:
        ce = data.controlled_edit_set(seed=args.seed, n_book=50, n_web=50, variant_share=0.0, big_family=400,
                                      big_j=0.85)
        docs = [new_document(d["id"], d["text"], "edits") for d in ce]
        out["big_family"] = evaluate("Large family (100 unrelated docs + 1 base with 400 variants at target J 0.85 to "
                                     "the base, ~0.75 to each other: band buckets beyond ALL_PAIRS_MAX)", docs,
                                     args.threshold, configs=CONFIGS[:3])
    return out


# =============================================================================================
# speed
# =============================================================================================


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cmd_speed(args) -> dict:
    import datasketch

    docs = data.speed_docs(args.docs)
    n = len(docs)
    words = [len(mh.shingle_words(t)) for t in docs]
    print(f"{n} real documents, mean {np.mean(words):.0f} words (gristmill words), 5-gram shingles, "
          "256 permutations, one process")
    res = {"documents": n, "mean_words": float(np.mean(words)), "rows": []}

    def row(name, seconds, note=""):
        r = {"name": name, "seconds": seconds, "docs_per_s": n / seconds, "note": note}
        res["rows"].append(r)
        print(f"  {name:62s} {n / seconds:9.0f} docs/s  ({seconds:.2f}s) {note}")
        return r

    for t in docs[:20]:
        mh.text_signature(t, 5, 256, 1)
    g = row("gristmill text_signature (text -> signature)",
            best_of(lambda: [mh.text_signature(t, 5, 256, 1) for t in docs], args.repeat))
    row("gristmill shingle_hashes only", best_of(lambda: [mh.shingle_hashes(t, 5) for t in docs], args.repeat))
    hashes = [mh.shingle_hashes(t, 5) for t in docs]
    row("gristmill signature only (hashes given)",
        best_of(lambda: [mh.signature(h, 256, 1) for h in hashes], args.repeat))

    import re

    word_re = re.compile(r"[^\W_]+")

    def make_shingles():
        # how a datasketch user builds 5-gram shingles: casefolded alphanumeric words joined by spaces
        # (= mh.shingle_words but for NFKC and combining marks; that reference path is slower, see DEDUP.md)
        return [mh.shingles_as_bytes(word_re.findall(t.casefold()), 5) for t in docs]

    sh_s = best_of(make_shingles, args.repeat)
    shingles = make_shingles()
    ds = row("datasketch MinHash.bulk (shingles as bytes given; sha1)",
             best_of(lambda: datasketch.MinHash.bulk(shingles, num_perm=256, seed=1), args.repeat))
    row("datasketch MinHash.bulk incl. shingle construction", ds["seconds"] + sh_s, f"(shingles: {sh_s:.2f}s)")
    # equality check: datasketch with gristmill's shingle hash gives the same signatures
    chk = datasketch.MinHash.bulk([mh.shingles_as_bytes(mh.shingle_words(t), 5) for t in docs[:50]], num_perm=256,
                                  seed=1, hashfunc=mh.shingle_hash_bytes)
    same = all(np.array_equal(m.hashvalues.astype(np.uint32), mh.text_signature(t, 5, 256, 1))
               for m, t in zip(chk, docs[:50]))
    print(f"  (check: gristmill signatures == datasketch MinHash with hashfunc=shingle_hash_bytes on 50 docs: {same})")
    res["datasketch_equal"] = same

    if DATATROVE_PY.exists() and not args.no_datatrove:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(docs, f)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        import subprocess

        proc = subprocess.run([str(DATATROVE_PY), str(HERE / "bench_dedup_datatrove.py"), f.name, str(args.repeat)],
                              capture_output=True, text=True, env=env)
        os.unlink(f.name)
        if proc.returncode != 0:
            print("datatrove run failed:\n" + proc.stderr[-3000:])
        else:
            dt = json.loads(proc.stdout.strip().splitlines()[-1])
            res["datatrove_version"] = dt["version"]
            for r in dt["rows"]:
                row(r["name"], r["seconds"], r.get("note", ""))
            print("  (* datatrove's xxhash64 of a str fails with xxhash 4.x; "
                  "timed with the str encoded to UTF-8 first)")
    print("ratios (gristmill text_signature docs/s ÷ other):")
    for r in res["rows"]:
        if not r["name"].startswith("gristmill"):
            ratio = g["docs_per_s"] / r["docs_per_s"]
            r["gristmill_speedup"] = ratio
            print(f"  vs {r['name'].strip():62s} {ratio:6.1f}x")
    gt_in_dt = [r for r in res["rows"] if r["name"].startswith("[datatrove venv] gristmill")]
    if gt_in_dt:
        print(f"  (gristmill in the datatrove venv process: {gt_in_dt[0]['docs_per_s']:.0f} docs/s)")
    return res


# =============================================================================================
# scale
# =============================================================================================


_seen = [0]


def _progress(doc):
    """Logs every 50,000th document read (fused with signing: how far a killed run got) and the RSS."""
    _seen[0] += 1
    if _seen[0] % 50_000 == 0:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{time.time():.3f} PROGRESS {_seen[0]} documents read and signed; max RSS so far {rss:.2f} GiB",
              file=sys.stderr, flush=True)
    return doc


def scale_overrides(args) -> dict:
    over = {"verify": not args.no_verify}
    if args.lsh_weights:
        over["lsh_weights"] = tuple(args.lsh_weights)
    if args.all_pairs_max:
        over["bucket_all_pairs_max"] = args.all_pairs_max
    return over


def cmd_scale_run(args) -> None:
    """Child process: the whole near_dedup stage on the DirectRunner over JSONL shards."""
    import resource

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from gristmill.pipelines.near_dedup import near_dedup

    # the in-process runner logs each bundle's stage at DEBUG: the parent reads progress and per-stage times from it
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(created).3f %(name)s %(message)s"))
    bundles = logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner.run_bundle")
    bundles.setLevel(logging.DEBUG)
    bundles.addHandler(handler)
    bundles.propagate = False
    out = Path(args.out)

    def summarise(d):
        yield "docs", 1
        if d["reason"] == "near_dedup:duplicate":
            yield "removed", 1
        if d["cluster_size"] > 1 and d["reason"] is None:
            yield "dup_clusters", 1

    def write(kv_list):
        out.with_suffix(".counts.json").write_text(json.dumps(dict(kv_list)))

    cfg = NearDedupConfig(**scale_overrides(args))
    print(f"{time.time():.3f} CONFIG bands x rows {mh.lsh_params(cfg)}, verify {cfg.verify}, "
          f"all_pairs_max {all_pairs_max(cfg)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    beam_args = ["--runner", "DirectRunner", *args.beam_args]

    def read(p):
        return (p | beam.io.ReadFromText(str(Path(args.data) / "part-*.jsonl")) | "Parse" >> beam.Map(json.loads)
                | "Progress" >> beam.Map(_progress))

    def count(docs, summary):
        _ = docs | beam.FlatMap(summary) | beam.CombinePerKey(sum) | beam.combiners.ToList() | beam.Map(write)

    if args.baseline:
        p = beam.Pipeline(options=PipelineOptions(beam_args))
        count(read(p), lambda d: [("docs", 1)])
        p.run().wait_until_finish()
    else:  # what gristmill corpus runs: NearDedupEdges, the rounds until converged, MarkNearDuplicates
        near_dedup(read, lambda marked: count(marked, summarise), cfg,
                   tempfile.mkdtemp(prefix="near-dedup-", dir=out.parent), beam_args)
    wall = time.perf_counter() - t0
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts = json.loads(out.with_suffix(".counts.json").read_text())
    print(f"{time.time():.3f} END", file=sys.stderr, flush=True)
    out.write_text(json.dumps({"wall_s": wall, "maxrss_self_kb": ru_self.ru_maxrss,
                               "maxrss_children_kb": ru_children.ru_maxrss,
                               "cpu_user_s": ru_self.ru_utime + ru_children.ru_utime, "counts": counts}))


def stage_times(log_path: Path) -> dict:
    """Per-stage seconds from the bundle log of a scale-run child (a bundle lasts until the next starts)."""
    import re

    pat = re.compile(r"^(\d+\.\d+) \S+run_bundle Running bundle for stage (.*)$")
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = pat.match(line)
        if m:
            events.append((float(m.group(1)), m.group(2)))
        elif line.endswith(" END") and line.split()[0].replace(".", "").isdigit():
            events.append((float(line.split()[0]), None))
    if events and events[-1][1] is not None:
        events.append((time.time(), None))
    per = Counter()
    for (t0, name), (t1, _) in zip(events, events[1:]):
        if name:
            parts = []
            for comp in re.findall(r"[^()+]+", name):
                comp = re.sub(r"^ref_(AppliedPTransform|PCollection_PCollection)_", "", comp.strip())
                comp = re.split(r"[/-]", comp)[0].replace("NearDedup", "")
                comp = re.sub(r"_\d+$", "", comp)
                if comp and comp not in parts:
                    parts.append(comp)
            per["+".join(parts)[:90]] += t1 - t0
    starts = [e for e in events if e[1]]
    return {"stage_seconds": per.most_common(), "bundles_started": len(starts),
            "last_stage": starts[-1][1][:200] if starts else None}


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def cmd_scale(args) -> dict:
    import signal
    import subprocess

    import psutil

    results = []
    mem_cap = int(args.mem_limit_gb * 2**30)
    for n in args.n:
        ddir = WORK / f"synth-{n}"
        if not (ddir / "DONE").exists():
            t0 = time.perf_counter()
            paths = data.write_synth(n, ddir, seed=args.seed)
            (ddir / "DONE").write_text(str(len(paths)))
            print(f"[N={n}] synthesised {n} documents into {len(paths)} shards in {time.perf_counter() - t0:.0f}s "
                  f"({ddir})", flush=True)
        for mode in (["baseline"] if args.baseline else []) + ["near_dedup"]:
            verify = "-noverify" if args.no_verify and mode != "baseline" else ""
            tag = f"{mode}{verify}-{'mp' if args.beam_args else 'inproc'}"
            res_path = WORK / f"result-{n}-{tag}.json"
            log_path = res_path.with_suffix(".log")
            res_path.unlink(missing_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "scale-run", "--data", str(ddir),
                   "--out", str(res_path)]
            if mode == "baseline":
                cmd.append("--baseline")
            elif args.no_verify:
                cmd.append("--no-verify")
            if mode != "baseline" and args.lsh_weights:
                cmd += ["--lsh-weights", *map(str, args.lsh_weights)]
            if mode != "baseline" and args.all_pairs_max:
                cmd += ["--all-pairs-max", str(args.all_pairs_max)]
            if args.beam_args:
                cmd += ["--beam-args", *args.beam_args]
            t0 = time.perf_counter()
            with open(log_path, "w") as log:
                child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            ps = psutil.Process(child.pid)
            peak, killed, samples = 0, None, []
            while child.poll() is None:
                rss = _tree_rss(ps)
                peak = max(peak, rss)
                el = time.perf_counter() - t0
                if not samples or el - samples[-1][0] >= 10:
                    samples.append((round(el, 1), rss))
                if rss > mem_cap:
                    killed = f"memory cap {args.mem_limit_gb} GiB"
                elif el > args.time_limit:
                    killed = f"time limit {args.time_limit}s"
                if killed:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - t0
            r = {"n": n, "mode": tag, "beam_args": args.beam_args, "process_wall_s": wall, "peak_rss_gib": peak / 2**30,
                 "rss_samples": samples, "log": str(log_path)}
            r.update(stage_times(log_path))
            cfg_lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if " CONFIG " in ln]
            r["config"] = cfg_lines[0].split(" CONFIG ", 1)[1] if cfg_lines else None
            if r["config"]:
                print(f"  ({r['config']})", flush=True)
            if res_path.exists():
                child_res = json.loads(res_path.read_text())
                r.update(child_res)
                r["docs_per_s"] = n / child_res["wall_s"]
                r["maxrss_gib"] = max(child_res["maxrss_self_kb"], child_res["maxrss_children_kb"]) / 2**20
                print(f"[N={n} {tag}] pipeline {child_res['wall_s']:.0f}s = {r['docs_per_s']:.0f} docs/s; "
                      f"peak RSS (tree, sampled) {r['peak_rss_gib']:.2f} GiB, ru_maxrss {r['maxrss_gib']:.2f} GiB; "
                      f"counts {child_res['counts']}", flush=True)
            else:
                lines = log_path.read_text(errors="replace").splitlines()
                r["failed"] = killed or f"exit {child.returncode}"
                prog = [ln for ln in lines if " PROGRESS " in ln]
                r["progress"] = prog[-1].split(" PROGRESS ")[1] if prog else None
                print(f"  progress: {r['progress']}", flush=True)
                print(f"[N={n} {tag}] DID NOT FINISH ({r['failed']}) after {wall:.0f}s; "
                      f"peak RSS {r['peak_rss_gib']:.2f} GiB; {r['bundles_started']} bundles started; "
                      f"last stage: {r['last_stage']}\n  log tail: {lines[-3:] if lines else ''}", flush=True)
            slowest = "; ".join(f"{name} {sec:.0f}" for name, sec in r["stage_seconds"][:8])
            print("  slowest stages (s): " + slowest, flush=True)
            results.append(r)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    return {"scale": results}


# =============================================================================================


def environment() -> dict:
    """Code version and machine, recorded with every result."""
    import platform
    import subprocess

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    others = []
    try:
        import psutil

        me = os.getpid()
        for pr in psutil.process_iter(["pid", "cmdline", "cpu_percent"]):
            cmd = " ".join(pr.info["cmdline"] or [])
            mine = "bench_dedup" in cmd
            if pr.info["pid"] != me and "python" in cmd and ("bench" in cmd or "pytest" in cmd) and not mine:
                others.append(cmd[:120])
    except Exception:  # noqa: BLE001
        pass
    return {"git_head": git("rev-parse", "--short", "HEAD"),
            "dedup_code_dirty": bool(git("status", "--porcelain", "dedupe", "gristmill/config.py")),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__, "loadavg_at_start": os.getloadavg(), "concurrent_processes": others}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--threshold", type=float, default=0.8)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--quick", action="store_true", help="NearDedupConfig defaults only, no large family")
    s = sub.add_parser("speed")
    s.add_argument("--docs", type=int, default=1500)
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--no-datatrove", action="store_true")
    c = sub.add_parser("scale")
    c.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--time-limit", type=float, default=2400)
    c.add_argument("--mem-limit-gb", type=float, default=18)
    c.add_argument("--baseline", action="store_true", help="also time read + parse + count only")
    c.add_argument("--no-verify", action="store_true", help="near_dedup.verify=false")
    c.add_argument("--lsh-weights", type=float, nargs=2, metavar=("FP", "FN"), help="near_dedup.lsh_weights")
    c.add_argument("--all-pairs-max", type=int, help="near_dedup.bucket_all_pairs_max (where the config has it)")
    c.add_argument("--beam-args", nargs=argparse.REMAINDER, default=[], help="extra DirectRunner options (last)")
    r = sub.add_parser("scale-run")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--baseline", action="store_true")
    r.add_argument("--no-verify", action="store_true")
    r.add_argument("--lsh-weights", type=float, nargs=2)
    r.add_argument("--all-pairs-max", type=int)
    r.add_argument("--beam-args", nargs=argparse.REMAINDER, default=[])
    for x in (q, s, c):
        x.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.cmd == "scale-run":
        return cmd_scale_run(args)
    WORK.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(f"# {env}")
    res = {"quality": cmd_quality, "speed": cmd_speed, "scale": cmd_scale}[args.cmd](args)
    res["environment"] = env
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
