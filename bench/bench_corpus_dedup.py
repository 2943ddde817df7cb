"""Dedup quality of the corpus benchmark's two engines, scored against exact Jaccard on the same input.

``bench_corpus.py --keep-outputs`` leaves each engine's output under bench/work/corpus/out/<run>/.
This script reads, per engine, the documents that reached its dedup step (``P``: they passed its
filters) and the documents it kept (``K``), and scores the removals ``P \\ K`` against the truth: the
exact Jaccard similarity of word 5-gram shingle sets of the documents' **input** texts (the same
text for both engines, before either cleans it), computed for every pair that shares a shingle.

* gristmill: ``K`` = the kept shards, ``P`` = ``K`` + the rejected documents whose reason is
  ``exact_dedup:*`` or ``near_dedup:*``.
* datatrove: ``P`` = ``filtered/`` (what its filters kept, the input of its MinHash stages), ``K`` =
  ``output/``.

Shingles are neutral to both engines: lower-cased ``\\w+`` words (Unicode), 5-grams, hashed with
blake2b-64 — neither gristmill's nor datatrove's own tokeniser.

For a similarity threshold t (0.7, 0.8, 0.9) the truth graph links two documents of ``P`` whose
Jaccard is >= t. Per engine:

* ``removed``: |P \\ K|;
* ``removal precision``: the share of removed documents that have a kept document (in ``K``) with
  Jaccard >= t — a removal is justified when its content survives in a document that was kept;
* ``redundant``: |P| - (connected components of the truth graph): what an ideal dedup removes;
* ``residual``: kept documents beyond the first in each truth component (duplicates left in ``K``);
  ``recall`` = 1 - residual / redundant;
* ``f1``: the harmonic mean of removal precision and recall;
* ``lost``: truth components none of whose documents was kept (content that vanished entirely).

Both engines are scored on their own ``P`` and, as a like-for-like view, on the documents both
passed to dedup (``P_gm ∩ P_dt``, keeping each engine's own decisions).

Example::

    .venv/bin/python bench/bench_corpus.py --runs gm,dt2 --keep-outputs
    .venv/bin/python bench/bench_corpus_dedup.py --json bench/results/corpus_dedup_quality.json
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "corpus"
WORD = re.compile(r"\w+")
THRESHOLDS = (0.7, 0.8, 0.9)


def read_jsonl_dir(pattern: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(glob.glob(pattern)):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                out[str(r["id"])] = r.get("text", "")
    return out


def read_arrow_ids(paths: list[str], reason_prefixes: tuple[str, ...] | None = None) -> set[str]:
    ids: set[str] = set()
    for path in paths:
        with pa.memory_map(path) as src:
            table = ipc.open_file(src).read_all()
        id_col = table.column("id").to_pylist()
        if reason_prefixes is None:
            ids.update(id_col)
        else:
            for i, reason in zip(id_col, table.column("reason").to_pylist()):
                if reason.startswith(reason_prefixes):
                    ids.add(i)
    return ids


def gristmill_sets(out: Path) -> tuple[set[str], set[str]]:
    kept = read_arrow_ids(sorted(glob.glob(str(out / "lang=*" / "*.arrow"))))
    dedup = read_arrow_ids(sorted(glob.glob(str(out / "_rejected" / "**" / "*.arrow"), recursive=True)),
                           ("exact_dedup:", "near_dedup:"))
    return kept | dedup, kept


def datatrove_sets(out: Path) -> tuple[set[str], set[str]]:
    def ids(pattern):
        s = set()
        for path in sorted(glob.glob(pattern)):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                s.update(str(json.loads(line)["id"]) for line in f)
        return s

    return ids(str(out / "filtered" / "*.jsonl.gz")), ids(str(out / "output" / "*.jsonl.gz"))


def shingles(text: str, n: int = 5) -> np.ndarray:
    words = WORD.findall(text.lower())
    if len(words) < n:
        grams = [" ".join(words)] if words else []
    else:
        grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    h = [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams]
    return np.unique(np.array(h, dtype=np.uint64))


def jaccard_pairs(sets: list[np.ndarray], floor: float) -> dict[tuple[int, int], float]:
    """Exact Jaccard (>= floor) of every pair of documents sharing a shingle: sparse doc x shingle product."""
    from scipy import sparse

    sizes = np.array([s.size for s in sets], dtype=np.int64)
    allh = np.concatenate(sets) if sets else np.empty(0, np.uint64)
    _, cols = np.unique(allh, return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), sizes)
    m = sparse.csr_matrix((np.ones(cols.size, dtype=np.int32), (rows, cols)),
                          shape=(len(sets), int(cols.max(initial=-1)) + 1))
    inter = sparse.triu(m @ m.T, k=1).tocoo()
    j = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    keep = j >= floor
    return {(int(a), int(b)): float(x) for a, b, x in zip(inter.row[keep], inter.col[keep], j[keep])}


def components(nodes: list[int], edges: list[tuple[int, int]]) -> dict[int, int]:
    parent = {v: v for v in nodes}

    def find(v):
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {v: find(v) for v in nodes}


def score(p: set[int], k: set[int], pairs: dict[tuple[int, int], float], t: float) -> dict:
    edges = [(a, b) for (a, b), j in pairs.items() if j >= t and a in p and b in p]
    comp = components(sorted(p), edges)
    members: dict[int, list[int]] = defaultdict(list)
    for v, c in comp.items():
        members[c].append(v)
    kept_partner = set()
    for a, b in edges:
        if b in k:
            kept_partner.add(a)
        if a in k:
            kept_partner.add(b)
    removed = p - k
    justified = len(removed & kept_partner)
    redundant = len(p) - len(members)
    residual = sum(max(0, sum(1 for v in ms if v in k) - 1) for ms in members.values())
    lost = sum(1 for ms in members.values() if not any(v in k for v in ms))
    out = {
        "threshold": t, "P": len(p), "K": len(k), "removed": len(removed),
        "removal_precision": round(justified / len(removed), 4) if removed else 1.0,
        "unjustified_removals": len(removed) - justified,
        "redundant": redundant, "residual": residual,
        "recall": round(1 - residual / redundant, 4) if redundant else 1.0,
        "lost_components": lost,
    }
    prec, rec = out["removal_precision"], out["recall"]
    out["f1"] = round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-dir", type=Path, default=WORK / "input_n20000_s0_k8", help="the benchmark's input")
    ap.add_argument("--gm", type=Path, default=WORK / "out" / "gm", help="gristmill's output directory")
    ap.add_argument("--dt", type=Path, default=WORK / "out" / "dt2", help="datatrove's work directory")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    for d in (args.input_dir, args.gm, args.dt):
        if not d.is_dir():
            raise SystemExit(f"{d} does not exist: run bench/bench_corpus.py --runs gm,dt2 --keep-outputs first")

    t0 = time.perf_counter()
    texts = read_jsonl_dir(str(args.input_dir / "*.jsonl.gz"))
    p_gm, k_gm = gristmill_sets(args.gm)
    p_dt, k_dt = datatrove_sets(args.dt)
    for name, p, k in (("gristmill", p_gm, k_gm), ("datatrove", p_dt, k_dt)):
        unknown = (p | k) - texts.keys()
        if unknown or not k <= p:
            raise SystemExit(f"{name}: {len(unknown)} ids not in the input, {len(k - p)} kept but not in P")
    ids = sorted(p_gm | p_dt)
    index = {d: i for i, d in enumerate(ids)}
    print(f"input {len(texts)} documents; dedup input: gristmill {len(p_gm)}, datatrove {len(p_dt)}, "
          f"both {len(p_gm & p_dt)}; shingling {len(ids)} ...", flush=True)
    sets = [shingles(texts[d]) for d in ids]
    pairs = jaccard_pairs(sets, min(THRESHOLDS))
    print(f"{len(pairs)} pairs with Jaccard >= {min(THRESHOLDS)} ({time.perf_counter() - t0:.1f} s)", flush=True)

    def idx(s):
        return {index[d] for d in s}

    views = {"own": {"gristmill": (idx(p_gm), idx(k_gm)), "datatrove": (idx(p_dt), idx(k_dt))}}
    both = idx(p_gm & p_dt)
    views["both"] = {"gristmill": (both, idx(k_gm) & both), "datatrove": (both, idx(k_dt) & both)}
    results = {"input": str(args.input_dir), "shingles": "lower-cased \\w+ words, 5-grams, blake2b-64",
               "pairs_ge_min_threshold": len(pairs), "views": {}}
    cols = ("P", "removed", "removal_precision", "unjustified_removals", "redundant", "residual", "recall", "f1",
            "lost_components")
    for view, engines in views.items():
        what = ("each engine on the documents it passed to dedup" if view == "own"
                else "the documents both engines passed to dedup")
        print(f"\n[{view}: {what}]")
        print(f"{'t':>4} {'engine':<10} " + " ".join(f"{c:>12}" for c in cols))
        rows = []
        for t in THRESHOLDS:
            for name, (p, k) in engines.items():
                r = {"engine": name, **score(p, k, pairs, t)}
                rows.append(r)
                print(f"{t:>4} {name:<10} " + " ".join(f"{r[c]!s:>12}" for c in cols))
        results["views"][view] = rows
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
