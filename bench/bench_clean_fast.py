"""The cleaning chain's two costliest pure-Python steps, before and after their exact speed-ups (issue 13).

* ``normalize_text``: before, every non-ASCII document went through ``ftfy.fix_text`` (which fixes it line by
  line); now ``filters._ftfy_fix`` checks for the characters ftfy acts on and calls ftfy only where one is
  present (pipelines/filters.py explains why that returns ftfy's string).
* ``gopher_repetition``: before, n-grams were hashed ids and every duplicate 5…10-gram check ran in full; now
  n-gram ids are exact, no longer n-gram is examined once no n-gram repeats, the left-to-right walk only stops
  at repeated positions, and lines and paragraphs are split with str.split where the text has no blank line.
  Timed twice: as the chain runs it (it tokenises; gopher_quality then reuses the tokens) and with the tokens
  already cached (the rest of the rule alone).

The "before" versions are copies of the old functions (below). Documents: every record of the shared web sample's
JSON Lines files, plus seeded perturbed copies (lines dropped, duplicated, shuffled) up to ``--docs``. One CPU
(``--cpu``), the old and the new function alternating over blocks of documents for ``--rounds`` rounds; reported:
ms per document (the median over rounds of each side's total), the ratio, and a check that every output is
identical. Times are indicative: compare only the two sides of one run.

    .venv/bin/python bench/bench_clean_fast.py              # ~3,000 documents, 3 rounds
    .venv/bin/python bench/bench_clean_fast.py --docs 1000 --rounds 1
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import time
import unicodedata
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import ftfy  # noqa: E402
import numpy as np  # noqa: E402

from gristmill.config import GopherRepetitionConfig, NormalizeConfig  # noqa: E402
from gristmill.pipelines import filters  # noqa: E402
from gristmill.pipelines.filters import Verdict, tokenize_words  # noqa: E402

DATA = Path(os.environ.get("GRISTMILL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "web"


# --- the old functions, as they were ---------------------------------------------------------------------


def old_normalize_text(text: str, cfg: NormalizeConfig) -> Verdict:
    text = filters._NEWLINES_RE.sub("\n", text)
    n_controls = 0
    if filters._CONTROL_RE.search(text):
        text, n_controls = filters._CONTROL_RE.subn("", text)
    if cfg.fix_unicode and not text.isascii():
        text = ftfy.fix_text(text, filters._ftfy_config(cfg.unicode_form))
    elif cfg.unicode_form != "none" and not text.isascii():
        text = unicodedata.normalize(cfg.unicode_form, text)
    text = text.strip()
    if not text:
        return Verdict(text, "empty")
    return Verdict(text, None, {"control_chars_removed": n_controls} if n_controls else {})


class OldNgrams:
    _MUL = np.random.RandomState(20211208).randint(1, 2**62, size=16, dtype=np.int64).astype(np.uint64)
    _MUL = _MUL * np.uint64(2) + np.uint64(1)

    def __init__(self, tokens):
        vocab: dict[str, int] = {}
        self.ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), dtype=np.uint64, count=len(tokens))
        self.cum = np.concatenate(([0], np.cumsum(np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)))))
        self._grams: dict[int, np.ndarray] = {}

    def grams(self, n):
        if n not in self._grams:
            count = self.ids.size - n + 1
            key = np.zeros(max(count, 0), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for k in range(n):
                    key += self.ids[k : k + count] * self._MUL[k]
            self._grams[n] = np.unique(key, return_inverse=True)[1].reshape(-1)
        return self._grams[n]

    def chars(self, start, n):
        return self.cum[start + n] - self.cum[start]


def old_top_ngram_chars(ng, n, min_count=1):
    grams = ng.grams(n)
    if grams.size == 0:
        return 0
    counts = np.bincount(grams)
    top = counts.max()
    if top < min_count:
        return 0
    first_top = int(np.flatnonzero(counts[grams] == top)[0])
    return int((ng.chars(first_top, n) + n - 1) * top)


def old_duplicate_ngram_chars(ng, n, limit=float("inf")):
    grams = ng.grams(n)
    total = grams.size
    if total == 0:
        return 0
    first = np.full(int(grams.max()) + 1, total, dtype=np.int64)
    np.minimum.at(first, grams, np.arange(total))
    repeats = np.flatnonzero(first[grams] < np.arange(total))
    if repeats.size == 0:
        return 0
    start = int(repeats[0])
    seen = set(grams[:start].tolist())
    gl = grams.tolist()
    cum = ng.cum.tolist()
    idx, repeated = start, 0
    while idx < total:
        g = gl[idx]
        if g in seen:
            repeated += cum[idx + n] - cum[idx]
            if repeated > limit:
                return repeated
            idx += n
        else:
            seen.add(g)
            idx += 1
    return repeated


def old_duplicates(items):
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for x in items:
        if x in seen:
            dup_items += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return dup_items, dup_chars


def old_gopher_repetition(text: str, cfg: GopherRepetitionConfig) -> Verdict:
    n_chars = len(text)
    if n_chars == 0:
        return Verdict(text, "empty")
    paragraphs = filters._PARAGRAPH_RE.split(text.strip())
    dup_paras, dup_para_chars = old_duplicates(paragraphs)
    signals: dict[str, float | int] = {"dup_para_frac": round(dup_paras / len(paragraphs), 4)}
    if cfg.dup_para_frac is not None and dup_paras / len(paragraphs) > cfg.dup_para_frac:
        return Verdict(text, "dup_para_frac", signals)
    if cfg.dup_para_char_frac is not None and dup_para_chars / n_chars > cfg.dup_para_char_frac:
        return Verdict(text, "dup_para_char_frac", signals)
    lines = filters._LINES_RE.split(text)
    dup_lines, dup_line_chars = old_duplicates(lines)
    signals["dup_line_frac"] = round(dup_lines / len(lines), 4)
    if cfg.dup_line_frac is not None and dup_lines / len(lines) > cfg.dup_line_frac:
        return Verdict(text, "dup_line_frac", signals)
    if cfg.dup_line_char_frac is not None and dup_line_chars / n_chars > cfg.dup_line_char_frac:
        return Verdict(text, "dup_line_char_frac", signals)
    tokens = tokenize_words(text)
    ng = OldNgrams(tokens)
    for n, frac in cfg.top_n_grams:
        if len(tokens) >= n and old_top_ngram_chars(ng, n, cfg.top_ngram_min_count) / n_chars > frac:
            return Verdict(text, f"top_{n}_gram", signals)
    for n, frac in cfg.dup_n_grams:
        if len(tokens) >= n and old_duplicate_ngram_chars(ng, n, frac * n_chars) / n_chars > frac:
            return Verdict(text, f"dup_{n}_gram", signals)
    return Verdict(text, None, signals)


# --- input ---------------------------------------------------------------------------------------------------


def load_docs(n_docs: int, seed: int = 13) -> list[str]:
    files = sorted(p for p in DATA.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise SystemExit(f"no JSON Lines files in {DATA} (set GRISTMILL_SHARED_DATA)")
    docs = []
    for path in files:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            docs += [t for t in (json.loads(line).get("text") or "" for line in f if line.strip()) if t.strip()]
    rng = random.Random(seed)
    seeds = list(docs)
    while len(docs) < n_docs:  # perturbed copies: lines dropped, a few duplicated, a window shuffled
        lines = rng.choice(seeds).split("\n")
        lines = [ln for ln in lines if rng.random() > 0.2] or lines[:1]
        for _ in range(rng.randint(0, 3)):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
        a = rng.randrange(len(lines))
        window = lines[a : a + rng.randint(2, 10)]
        rng.shuffle(window)
        lines[a : a + len(window)] = window
        docs.append("\n".join(lines))
    return docs[:n_docs]


# --- timing --------------------------------------------------------------------------------------------------


def same(a: Verdict, b: Verdict) -> bool:
    return (a.text, a.reason, list(a.signals.items())) == (b.text, b.reason, list(b.signals.items())) and all(
        type(x) is type(y) for x, y in zip(a.signals.values(), b.signals.values(), strict=True)
    )


def compare(name: str, old, new, texts: list[str], cfg, rounds: int, block: int, tokens_cached: bool = False) -> dict:
    """Old and new alternate over blocks of ``block`` documents; per side, the median over rounds of the
    total time, in ms per document. With ``tokens_cached`` each document is tokenised (untimed) just before
    it is judged, so that only the rest is timed."""
    for t in texts[:50]:  # warm-up (imports, regex compilation, caches)
        old(t, cfg), new(t, cfg)
    totals: dict[str, list[float]] = {"old": [], "new": []}
    outputs: dict[str, list] = {"old": [None] * len(texts), "new": [None] * len(texts)}
    for r in range(rounds):
        spent = {"old": 0.0, "new": 0.0}
        for start in range(0, len(texts), block):
            part = range(start, min(start + block, len(texts)))
            sides = [("old", old), ("new", new)] if (r + start // block) % 2 == 0 else [("new", new), ("old", old)]
            for side, fn in sides:
                tokenize_words.cache_clear()  # each side tokenises for itself
                out = outputs[side]
                if tokens_cached:
                    for i in part:
                        tokenize_words(texts[i])
                        t0 = time.perf_counter()
                        out[i] = fn(texts[i], cfg)
                        spent[side] += time.perf_counter() - t0
                    continue
                t0 = time.perf_counter()
                for i in part:
                    out[i] = fn(texts[i], cfg)
                spent[side] += time.perf_counter() - t0
        for side in spent:
            totals[side].append(spent[side] / len(texts) * 1e3)
    differ = sum(not same(a, b) for a, b in zip(outputs["old"], outputs["new"], strict=True))
    assert differ == 0, f"{name}: {differ} documents differ"
    res = {side: statistics.median(v) for side, v in totals.items()}
    res["speedup"] = res["old"] / res["new"]
    print(f"{name:<36} old {res['old']:7.3f} ms/doc   new {res['new']:7.3f} ms/doc   "
          f"old/new {res['speedup']:5.2f}x   ({len(texts)} documents, outputs identical)")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: do not pin)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    docs = load_docs(args.docs)
    norm_cfg, rep_cfg = NormalizeConfig(), GopherRepetitionConfig()
    non_ascii = sum(not t.isascii() for t in docs)
    print(f"{len(docs)} documents ({non_ascii} not ASCII), pinned to CPU {args.cpu}, {args.rounds} rounds")
    results = {"normalize_text": compare("normalize_text", old_normalize_text, filters.normalize_text, docs, norm_cfg,
                                         args.rounds, args.block)}
    cleaned = [v.text for v in map(lambda t: filters.normalize_text(t, norm_cfg), docs) if v.keep]
    # in the chain gopher_repetition tokenises (when its line and paragraph rules have not already
    # dropped the document) and gopher_quality reuses the tokens
    results["gopher_repetition"] = compare("gopher_repetition", old_gopher_repetition, filters.gopher_repetition,
                                           cleaned, rep_cfg, args.rounds, args.block)
    results["gopher_repetition_ngrams"] = compare(
        "gopher_repetition, tokens cached", old_gopher_repetition, filters.gopher_repetition, cleaned, rep_cfg,
        args.rounds, args.block, tokens_cached=True,
    )
    reasons: dict[str, int] = {}
    for t in cleaned:
        reason = filters.gopher_repetition(t, rep_cfg).reason or "kept"
        reasons[reason] = reasons.get(reason, 0) + 1
    print("gopher_repetition verdicts:", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda x: -x[1])))
    results["gopher_repetition_verdicts"] = reasons
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
