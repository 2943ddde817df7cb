"""Benchmark: gristmill's clean + language-ID stage against datatrove's reference filters.

Compares, on the same documents and on one CPU core:

* per filter, every document through both implementations:
  ``pipelines.filters.gopher_quality``   vs ``datatrove GopherQualityFilter``
  ``pipelines.filters.gopher_repetition`` vs ``datatrove GopherRepetitionFilter``
  ``pipelines.langid.predict`` + ``decide`` vs ``datatrove LanguageFilter`` (languages=None, 0.65)
* the whole stage: ``pipelines.clean.Cleaner.process`` vs datatrove
  LanguageFilter -> GopherRepetitionFilter -> GopherQualityFilter (the last on ``en`` only, as
  gristmill's default config scopes it), plus gristmill's own filters chained the same way.

Speed is docs/s (time.perf_counter, single process, pinned to one CPU, warm-up pass excluded; the
sides take turns in blocks of 500 documents so that load from other processes hits both alike);
agreement is the fraction of documents on which keep/drop decisions match, with a confusion count,
the top reasons on each side and examples of disagreements written to
``bench/work/disagreements_<filter>.jsonl``.

Run it in the bench environment (datatrove is not a gristmill dependency)::

    bash bench/setup_bench_env.sh
    bench/.venv-bench/bin/python bench/bench_clean.py --json bench/work/results.json
    bench/.venv-bench/bin/python bench/bench_clean.py --limit 2000      # quick run
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

# one core: set before numpy / spaCy / fastText are imported
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from gristmill.config import GristmillConfig  # noqa: E402
from gristmill.documents import new_document  # noqa: E402
from gristmill.pipelines import filters, langid, words  # noqa: E402
from gristmill.pipelines.clean import Cleaner  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

WORK = REPO / "bench" / "work"
DATA = Path(os.environ.get("GRISTMILL_SHARED_DATA", "/work/shared/data")) / "web"
SOURCES = {
    "dolma_cc": "dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz",
    "oscar": "oscar2019_hf_dummy_multilingual.jsonl",
    "ccnet0091": "dolma_ccnet_cc_en_head-0091.jsonl",
    "ccnet0174": "dolma_ccnet_cc_en_head-0174.jsonl",
}
SNIPPET = 400


# ---------------------------------------------------------------------------------------------
# Input: the shared web sample, replicated and perturbed (seeded), cached under bench/work/
# ---------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_seed_docs() -> list[tuple[str, str]]:
    """(seed id, text) of every non-empty record of the shared web sample."""
    out = []
    for tag, name in SOURCES.items():
        for i, rec in enumerate(_read_jsonl(DATA / name)):
            text = rec.get("text") or ""
            if text.strip():
                out.append((f"{tag}/{i}", text))
    return out


def _drop_lines(rng, text, _pool):
    lines = text.split("\n")
    p = rng.uniform(0.05, 0.3)
    kept = [ln for ln in lines if rng.random() >= p]
    return "\n".join(kept or lines[:1])


def _shuffle_lines(rng, text, _pool):
    lines = text.split("\n")
    if len(lines) > 2:
        a = rng.randrange(len(lines) - 1)
        b = min(len(lines), a + rng.randint(2, 12))
        window = lines[a:b]
        rng.shuffle(window)
        lines[a:b] = window
    return "\n".join(lines)


def _dup_lines(rng, text, _pool):
    lines = text.split("\n")
    for _ in range(rng.randint(1, max(1, len(lines) // 3))):
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
    return "\n".join(lines)


def _swap_words(rng, text, _pool):
    lines = text.split("\n")
    for _ in range(rng.randint(1, 20)):
        i = rng.randrange(len(lines))
        words = lines[i].split(" ")
        if len(words) > 1:
            j = rng.randrange(len(words) - 1)
            words[j], words[j + 1] = words[j + 1], words[j]
            lines[i] = " ".join(words)
    return "\n".join(lines)


def _truncate(rng, text, _pool):
    cut = int(len(text) * rng.uniform(0.2, 0.9))
    sp = text.rfind(" ", 0, cut)
    return text[: sp if sp > 0 else max(cut, 1)]


def _concat(rng, text, pool):
    return text + "\n\n" + rng.choice(pool)[1]


def _repeat_block(rng, text, _pool):
    # boilerplate templates: a block of the page repeated (menus, footers, spam pages)
    paras = text.split("\n\n")
    block = rng.choice(paras)
    return text + ("\n\n" + block) * rng.randint(1, 4)


PERTURBATIONS = {
    "drop_lines": _drop_lines,
    "shuffle_lines": _shuffle_lines,
    "dup_lines": _dup_lines,
    "swap_words": _swap_words,
    "truncate": _truncate,
    "concat": _concat,
    "repeat_block": _repeat_block,
}
_OP_WEIGHTS = {
    "drop_lines": 3,
    "shuffle_lines": 2,
    "dup_lines": 1,
    "swap_words": 3,
    "truncate": 2,
    "concat": 2,
    "repeat_block": 1,
}


def build_docs(n: int, seed: int) -> list[dict]:
    """Every seed document once unchanged, then perturbed copies of random seed documents (1-3
    perturbations each) up to ``n`` documents. Deterministic for (n, seed, input files)."""
    pool = load_seed_docs()
    rng = random.Random(seed)
    ops, weights = zip(*_OP_WEIGHTS.items())
    docs = [{"id": f"b{i:06d}", "seed": sid, "ops": [], "text": t} for i, (sid, t) in enumerate(pool[:n])]
    while len(docs) < n:
        sid, text = rng.choice(pool)
        chosen = rng.choices(ops, weights=weights, k=rng.randint(1, 3))
        for op in chosen:
            text = PERTURBATIONS[op](rng, text, pool)
        if not text.strip():
            continue
        docs.append({"id": f"b{len(docs):06d}", "seed": sid, "ops": list(chosen), "text": text})
    return docs


def cached_docs(n: int, seed: int) -> list[dict]:
    path = WORK / f"docs_n{n}_s{seed}.jsonl.gz"
    if path.is_file():
        return _read_jsonl(path)
    docs = build_docs(n, seed)
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    tmp.rename(path)
    return docs


# ---------------------------------------------------------------------------------------------
# datatrove, offline: LanguageFilter on the lid.176.ftz gristmill ships, through fasttext-predict
# ---------------------------------------------------------------------------------------------


def make_datatrove(model_path: str):
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.utils.lid import FT176LID

    class _NumpyScores:
        """fasttext-predict returns probabilities as a tuple of floats; datatrove calls .item()."""

        def __init__(self, model):
            self._model = model

        def predict(self, text, k=1, threshold=0.0):
            labels, probs = self._model.predict(text, k=k, threshold=threshold)
            return labels, np.asarray(probs)

    class LocalFT176LID(FT176LID):
        """FT176LID reading a local model file instead of downloading lid.176.bin."""

        def __init__(self, path, languages=None, k=-1):
            super().__init__(languages, k)
            self.path = path

        @property
        def model(self):
            if self._model is None:
                from fasttext.FastText import _FastText

                self._model = _NumpyScores(_FastText(self.path))
            return self._model

    class OfflineLanguageFilter(LanguageFilter):
        # PipelineStep.__new__ insists on the *distribution* fasttext-numpy2-wheel; fasttext-predict
        # provides the same `fasttext` module (predict-only) under another name. Skip that check.
        def __new__(cls, *args, **kwargs):
            return object.__new__(cls)

        def __init__(self, path, **kwargs):
            super().__init__(**kwargs)
            self.model = LocalFT176LID(path, self.languages)

    # C4 as FineWeb ran it: without the terminal-punctuation line rule
    return (Document, GopherQualityFilter(), GopherRepetitionFilter(), OfflineLanguageFilter(model_path),
            C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter())


def dt_result(res) -> tuple[bool, str | None]:
    if isinstance(res, tuple):
        return bool(res[0]), res[1]
    return bool(res), None if res else "dropped"


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def timed(sides, warmup: int, block: int):
    """Time each (fn, items) side over all its items; the sides take turns block by block, so that
    background load on a shared machine hits all sides alike. Returns (outputs, seconds) per side."""
    for fn, items in sides:
        for x in items[:warmup]:
            fn(x)
    n = len(sides[0][1])
    outs = [[None] * n for _ in sides]
    secs = [0.0] * len(sides)
    clock = time.perf_counter
    for start in range(0, n, block):
        stop = min(n, start + block)
        for k, (fn, items) in enumerate(sides):
            out = outs[k]
            t0 = clock()
            for i in range(start, stop):
                out[i] = fn(items[i])
            secs[k] += clock() - t0
    return list(zip(outs, secs))


# ---------------------------------------------------------------------------------------------
# Diagnostics for disagreements: every rule's value on both sides (not only the first failing one)
# ---------------------------------------------------------------------------------------------


def gm_quality_values(text: str, cfg) -> dict:
    """Every gopher_quality signal, through the public API: the same config with thresholds off."""
    relaxed = cfg.model_copy(
        update={
            "min_doc_words": None,
            "max_doc_words": None,
            "min_avg_word_length": None,
            "max_avg_word_length": None,
            "max_symbol_word_ratio": None,
            "max_bullet_lines_ratio": None,
            "max_ellipsis_lines_ratio": None,
            "min_alpha_words_ratio": 0.0,
            "min_stop_words": 1,
        }
    )
    out = dict(filters.gopher_quality(text, relaxed).signals)
    out["n_tokens"] = len(filters.tokenize_words(text))
    return out


def dt_quality_values(text: str) -> dict:
    from datatrove.utils.text import PUNCTUATION_SET, split_into_words

    words = split_into_words(text, "eng")
    nsw = [w for w in words if any(ch not in PUNCTUATION_SET for ch in w)]
    return {
        "n_words": len(nsw),
        "n_tokens": len(words),
        "mean_word_len": round(float(np.mean([len(w) for w in nsw])), 3) if nsw else 0,
        "alpha_frac": round(sum(any(c.isalpha() for c in w) for w in words) / len(words), 4) if words else 0,
        "hash_ratio": round(text.count("#") / len(words), 4) if words else 0,
        "stop_words": sorted({"the", "be", "to", "of", "and", "that", "have", "with"}.intersection(words)),
    }


def _top_ngram(words: list[str], n: int) -> tuple[int, int]:
    """(characters with single spaces × count, count) of the most frequent n-gram."""
    grams = Counter(zip(*(words[i:] for i in range(n))))
    if not grams:
        return 0, 0
    gram, count = grams.most_common(1)[0]
    return (sum(map(len, gram)) + n - 1) * count, count


def _dup_ngram_chars(words: list[str], n: int) -> int:
    """Characters (spaces excluded) of n-grams repeating an earlier one, jumping over each repeat."""
    seen: set[tuple[str, ...]] = set()
    idx, repeated = 0, 0
    while idx < len(words) - n + 1:
        g = tuple(words[idx : idx + n])
        if g in seen:
            repeated += sum(map(len, g))
            idx += n
        else:
            seen.add(g)
            idx += 1
    return repeated


def gm_repetition_values(text: str, cfg) -> dict:
    """The repetition fractions on gristmill's tokens (filters.tokenize_words), every rule; top_n
    is scored even when the n-gram occurs once, and top_n_count says how often it occurs."""
    words = filters.tokenize_words(text)
    n = len(text)
    out: dict = {}
    for k, _ in cfg.top_n_grams:
        chars, count = _top_ngram(words, k)
        out[f"top_{k}"], out[f"top_{k}_count"] = round(chars / n, 4), count
    out.update({f"dup_{k}": round(_dup_ngram_chars(words, k) / n, 4) for k, _ in cfg.dup_n_grams})
    return out


def dt_repetition_values(text: str) -> dict:
    from datatrove.pipeline.filters.gopher_repetition_filter import (
        find_all_duplicate,
        find_top_duplicate,
        get_n_grams,
    )
    from datatrove.utils.text import split_into_words

    words = split_into_words(text, "eng")
    n = len(text)
    out = {}
    for k in (2, 3, 4):
        g = get_n_grams(words, k)
        out[f"top_{k}"] = round(find_top_duplicate(g) / n, 4) if g else 0
    for k in range(5, 11):
        out[f"dup_{k}"] = round(find_all_duplicate(words, k) / n, 4)
    return out


# ---------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------


def agreement(name, docs, gm, dt, examples: int, extra=None, en=None) -> dict:
    """gm, dt: lists of (keep, reason). Writes disagreements_<name>.jsonl. ``en``: mask of the
    documents LID labels English, for the agreement where gristmill's default config applies the rule."""
    conf = Counter()
    gm_reasons, dt_reasons = Counter(), Counter()
    rows = []
    for d, (gk, gr), (dk, dr) in zip(docs, gm, dt):
        conf[("keep" if gk else "drop", "keep" if dk else "drop")] += 1
        if gk != dk:
            if not gk:
                gm_reasons[gr] += 1
            else:
                dt_reasons[dr] += 1
            row = {
                "id": d["id"],
                "seed": d["seed"],
                "ops": d["ops"],
                "n_chars": len(d["text"]),
                "gristmill": {"keep": gk, "reason": gr},
                "datatrove": {"keep": dk, "reason": dr},
            }
            if extra:
                row.update(extra(d))
            row["snippet"] = d["text"][:SNIPPET]
            rows.append(row)
    n = len(docs)
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / f"disagreements_{name}.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    en_stats = {}
    if en is not None:
        n_en = sum(en)
        agree_en = sum(1 for m, (gk, _), (dk, _) in zip(en, gm, dt) if m and gk == dk)
        en_stats = {
            "n_en": n_en,
            "agree_frac_en": round(agree_en / n_en, 5) if n_en else None,
            "disagree_en": n_en - agree_en,
        }
    both_drop_same = sum(1 for (gk, gr), (dk, dr) in zip(gm, dt) if not gk and not dk and _same_reason(gr, dr))
    both_drop = conf[("drop", "drop")]
    return {
        "n": n,
        "agree_frac": round(1 - len(rows) / n, 5) if n else None,
        "disagree": len(rows),
        "confusion_gm_vs_dt": {f"gm_{a}/dt_{b}": c for (a, b), c in sorted(conf.items())},
        **en_stats,
        "both_drop_same_rule_frac": round(both_drop_same / both_drop, 4) if both_drop else None,
        "gm_drop_dt_keep_top_gm_reasons": gm_reasons.most_common(8),
        "gm_keep_dt_drop_top_dt_reasons": dt_reasons.most_common(8),
        "examples_gm_drop": [r["id"] for r in rows if not r["gristmill"]["keep"]][:examples],
        "examples_dt_drop": [r["id"] for r in rows if not r["datatrove"]["keep"]][:examples],
        "disagreements_file": str((WORK / f"disagreements_{name}.jsonl").relative_to(REPO)),
    }


_REASON_MAP = {  # datatrove rule name -> gristmill rule name
    "gopher_short_doc": "short_doc",
    "gopher_long_doc": "long_doc",
    "gopher_below_avg_threshold": "mean_word_length_low",
    "gopher_above_avg_threshold": "mean_word_length_high",
    "gopher_too_many_hashes": "too_many_hashes",
    "gopher_too_many_ellipsis": "too_many_ellipsis",
    "gopher_too_many_bullets": "too_many_bullets",
    "gopher_too_many_end_ellipsis": "too_many_end_ellipsis",
    "gopher_below_alpha_threshold": "alpha_words_low",
    "gopher_enough_stop_words": "too_few_stop_words",
}


def _same_reason(gr, dr) -> bool:
    if dr is None or gr is None:
        return gr == dr
    dr = _REASON_MAP.get(dr, dr)
    if dr.startswith("duplicated_") and dr.endswith("_n_grams"):
        dr = "dup_" + dr[len("duplicated_") : -len("_n_grams")] + "_gram"
    return dr == gr


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def rate(n, secs):
    return round(n / secs, 1) if secs > 0 else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=50_000, help="documents to build (cached in bench/work/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N documents")
    ap.add_argument("--warmup", type=int, default=200, help="documents run untimed before each timing")
    ap.add_argument("--block", type=int, default=500, help="documents per turn when the sides alternate")
    ap.add_argument("--examples", type=int, default=5, help="example ids per disagreement direction")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: do not pin)")
    args = ap.parse_args(argv)

    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    t_build = time.perf_counter()
    docs = cached_docs(args.docs, args.seed)
    if args.limit:
        docs = docs[: args.limit]
    texts = [d["text"] for d in docs]
    n = len(docs)
    print(
        f"{n} documents, {sum(map(len, texts)) / 1e6:.1f} M chars "
        f"(loaded/built in {time.perf_counter() - t_build:.1f} s)",
        flush=True,
    )

    cfg = GristmillConfig()
    c = cfg.clean
    model_path = langid.default_model_path()
    model = langid.load_model(cfg.langid.model_path)
    Document, dt_quality, dt_repetition, dt_lang, dt_c4, dt_fineweb = make_datatrove(model_path)
    dt_docs = [Document(text=t, id=d["id"]) for t, d in zip(texts, docs)]
    import spacy

    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": _cpu_name(),
            "cores_visible": os.cpu_count(),
            "pinned_cpu": args.cpu if args.cpu >= 0 else None,
            "loadavg_start": _loadavg(),
        },
        "gristmill": _git_revision(),
        "versions": {
            "datatrove": _version("datatrove"),
            "spacy": spacy.__version__,
            "fasttext-predict": _version("fasttext-predict"),
            "ftfy": _version("ftfy"),
        },
        "input": {"docs": n, "chars": sum(map(len, texts)), "seed": args.seed, "lid_model": model_path},
        "speed": {},
        "agreement": {},
    }

    def record(name, gm_secs, dt_secs, gm_label="gristmill", dt_label="datatrove"):
        r = {
            f"{gm_label}_docs_s": rate(n, gm_secs),
            f"{dt_label}_docs_s": rate(n, dt_secs),
            "ratio_gm_over_dt": round(dt_secs / gm_secs, 2),
            "gm_secs": round(gm_secs, 2),
            "dt_secs": round(dt_secs, 2),
        }
        results["speed"][name] = r
        print(
            f"  {name:<18} gristmill {r[gm_label + '_docs_s']:>9} docs/s   datatrove "
            f"{r[dt_label + '_docs_s']:>9} docs/s   ratio {r['ratio_gm_over_dt']:>6}x",
            flush=True,
        )

    # --- per filter -------------------------------------------------------------------------
    print("speed (docs/s, one core, warm-up excluded):", flush=True)
    gq = c.gopher_quality
    (gm_q, s_gm), (dt_q, s_dt) = timed(
        [(lambda t: filters.gopher_quality(t, gq), texts), (dt_quality.filter, dt_docs)], args.warmup, args.block
    )
    record("gopher_quality", s_gm, s_dt)

    gr = c.gopher_repetition
    (gm_r, s_gm), (dt_r, s_dt) = timed(
        [(lambda t: filters.gopher_repetition(t, gr), texts), (dt_repetition.filter, dt_docs)], args.warmup, args.block
    )
    record("gopher_repetition", s_gm, s_dt)

    # English settings on every document (what datatrove's filters do): the rule is compared, not the languages
    fq, c4 = c.fineweb_quality, c.c4_lines
    (gm_f, s_gm), (dt_f, s_dt) = timed(
        [(lambda t: filters.fineweb_quality(t, fq), texts), (dt_fineweb.filter, dt_docs)], args.warmup, args.block
    )
    record("fineweb_quality", s_gm, s_dt)

    def dt_c4_filter(doc):  # C4 rewrites doc.text: a copy per call, so that each side sees the original
        return dt_c4.filter(Document(text=doc.text, id=doc.id))

    (gm_c, s_gm), (dt_c, s_dt) = timed(
        [(lambda t: filters.c4_lines(t, c4), texts), (dt_c4_filter, dt_docs)], args.warmup, args.block
    )
    record("c4_as_fineweb", s_gm, s_dt)

    lc = cfg.langid

    def gm_lid(t):
        lang, score = langid.predict(t, lc, model)
        return lang, score, langid.decide(lang, score, lc)

    def dt_lid(doc):
        keep = dt_lang.filter(doc)
        return doc.metadata["language"], doc.metadata["language_score"], keep

    (gm_l, s_gm), (dt_l, s_dt) = timed([(gm_lid, texts), (dt_lid, dt_docs)], args.warmup, args.block)
    record("langid", s_gm, s_dt)

    # --- whole stage ----------------------------------------------------------------------
    cleaner = Cleaner(cfg)

    def gm_stage(d):
        return cleaner.process(new_document(d["id"], d["text"], "bench"))["reason"]

    def gm_chain(d):  # gristmill filters chained exactly like the datatrove chain below
        t = d["text"]
        lang, score = langid.predict(t, lc, model)
        why = langid.decide(lang, score, lc)
        if why:
            return f"langid:{why}"
        v = filters.gopher_repetition(t, gr)
        if v.reason:
            return f"gopher_repetition:{v.reason}"
        if lang == "en":
            v = filters.gopher_quality(t, gq)
            if v.reason:
                return f"gopher_quality:{v.reason}"
            v = filters.c4_lines(t, c4)
            if v.reason:
                return f"c4_lines:{v.reason}"
            v = filters.fineweb_quality(v.text, fq)
            if v.reason:
                return f"fineweb_quality:{v.reason}"
        return None

    def dt_stage(d):  # FineWeb's order; the English rules on English documents, as FineWeb ran them
        doc = Document(text=d["text"], id=d["id"])
        if not dt_lang.filter(doc):
            return "langid:low_score"
        keep, why = dt_result(dt_repetition.filter(doc))
        if not keep:
            return f"gopher_repetition:{why}"
        if doc.metadata["language"] == "en":
            for name, step in (("gopher_quality", dt_quality), ("c4_lines", dt_c4), ("fineweb_quality", dt_fineweb)):
                keep, why = dt_result(step.filter(doc))
                if not keep:
                    return f"{name}:{why}"
        return None

    (st_gm, s_gm), (st_dt, s_dt), (st_gc, s_gc) = timed(
        [(gm_stage, docs), (dt_stage, docs), (gm_chain, docs)], args.warmup, args.block
    )
    record("stage", s_gm, s_dt)
    record("stage_same_work", s_gc, s_dt)
    results["speed"]["stage"]["what"] = {
        "gristmill": "Cleaner.process with default config: ftfy+NFC normalize -> fastText lid.176.ftz "
        "(k=1, first 10,000 chars, keep score>=0.65) -> GopherRepetition -> GopherQuality -> C4 as FineWeb "
        "(rewrites text) -> FineWeb quality, each in every language with its settings (zh/ja/th segmented) "
        "-> PII redaction; includes new_document()",
        "datatrove": "LanguageFilter(languages=None, 0.65; lid.176.ftz, k=-1, full text) -> "
        "GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter(filter_no_terminal_punct=False) -> "
        "FineWebQualityFilter (the last three only when language == en, as FineWeb ran them), "
        "filter() called directly (no pipeline/stats overhead); includes Document()",
    }
    results["speed"]["stage_same_work"]["what"] = (
        "gristmill langid.predict+decide -> gopher_repetition -> gopher_quality -> c4_lines -> fineweb_quality "
        "(the last three on en), i.e. the same work as the datatrove chain, no ftfy/PII"
    )

    # --- agreement -----------------------------------------------------------------------
    ex = args.examples
    en = [lang == "en" for lang, _, _ in gm_l]  # gristmill's LID label on the raw text
    results["agreement"]["gopher_quality"] = agreement(
        "gopher_quality",
        docs,
        [(v.keep, v.reason) for v in gm_q],
        [dt_result(r) for r in dt_q],
        ex,
        extra=lambda d: {"gm_values": gm_quality_values(d["text"], gq), "dt_values": dt_quality_values(d["text"])},
        en=en,
    )
    results["agreement"]["gopher_repetition"] = agreement(
        "gopher_repetition",
        docs,
        [(v.keep, v.reason) for v in gm_r],
        [dt_result(r) for r in dt_r],
        ex,
        extra=lambda d: {
            "gm_values": gm_repetition_values(d["text"], gr),
            "dt_values": dt_repetition_values(d["text"]),
        },
        en=en,
    )
    def c4_sentences(text):  # what gristmill's C4 counts in the lines it keeps
        kept = filters.c4_lines(text, c4.model_copy(update={"min_sentences": None})).text
        return sum(words.sentences(line) for line in kept.split("\n"))

    results["agreement"]["fineweb_quality"] = agreement(
        "fineweb_quality", docs, [(v.keep, v.reason) for v in gm_f], [dt_result(r) for r in dt_f], ex, en=en,
    )
    results["agreement"]["c4_as_fineweb"] = agreement(
        "c4_as_fineweb", docs, [(v.keep, v.reason) for v in gm_c], [dt_result(r) for r in dt_c], ex, en=en,
        extra=lambda d: {"gm_sentences": c4_sentences(d["text"])},
    )
    lid_by_id = {d["id"]: (g, t) for d, g, t in zip(docs, gm_l, dt_l)}

    def lid_reason(text, why):  # gristmill reads only the first max_chars characters
        return why and f"{why}{' (doc > max_chars)' if len(text) > lc.max_chars else ''}"

    results["agreement"]["langid_keep"] = agreement(
        "langid_keep",
        docs,
        [(why is None, lid_reason(t, why)) for t, (lang, score, why) in zip(texts, gm_l)],
        [(bool(keep), None if keep else lid_reason(t, "low_score")) for t, (_, _, keep) in zip(texts, dt_l)],
        ex,
        extra=lambda d: {"gm_lang": lid_by_id[d["id"]][0][:2], "dt_lang": lid_by_id[d["id"]][1][:2]},
    )
    same_label = sum(1 for (gl, _, _), (dl, _, _) in zip(gm_l, dt_l) if gl == dl)
    label_pairs = Counter((gl, dl) for (gl, _, _), (dl, _, _) in zip(gm_l, dt_l) if gl != dl)
    score_diff = [abs(gs - ds) for (gl, gs, _), (dl, ds, _) in zip(gm_l, dt_l) if gl == dl]
    long_docs = sum(1 for t in texts if len(t) > lc.max_chars)
    results["agreement"]["langid_label"] = {
        "agree_frac": round(same_label / n, 5),
        "disagree": n - same_label,
        "top_label_pairs_gm_dt": [[f"{a}->{b}", k] for (a, b), k in label_pairs.most_common(8)],
        "label_disagree_on_docs_longer_than_max_chars": sum(
            1 for t, (gl, _, _), (dl, _, _) in zip(texts, gm_l, dt_l) if gl != dl and len(t) > lc.max_chars
        ),
        "docs_longer_than_max_chars": long_docs,
        "max_abs_score_diff_same_label_short_docs": round(
            max(
                [
                    abs(gs - ds)
                    for t, (gl, gs, _), (dl, ds, _) in zip(texts, gm_l, dt_l)
                    if gl == dl and len(t) <= lc.max_chars
                ]
                or [0]
            ),
            6,
        ),
        "mean_abs_score_diff_same_label": round(float(np.mean(score_diff)) if score_diff else 0, 6),
    }
    st_conf = Counter((g is None, d is None) for g, d in zip(st_gm, st_dt))
    chain_conf = Counter((g is None, d is None) for g, d in zip(st_gc, st_dt))
    results["agreement"]["stage"] = {
        "note": "informational: gristmill also normalises (ftfy) and applies every rule in every language",
        "gm_kept": sum(1 for g in st_gm if g is None),
        "dt_kept": sum(1 for d in st_dt if d is None),
        "agree_frac": round((st_conf[(True, True)] + st_conf[(False, False)]) / n, 5),
        "gm_stage_reasons": Counter(g.split(":")[0] if g else "kept" for g in st_gm).most_common(),
        "dt_stage_reasons": Counter(d.split(":")[0] if d else "kept" for d in st_dt).most_common(),
    }
    results["agreement"]["stage_same_work"] = {
        "agree_frac": round((chain_conf[(True, True)] + chain_conf[(False, False)]) / n, 5),
        "gm_kept": sum(1 for g in st_gc if g is None),
        "dt_kept": sum(1 for d in st_dt if d is None),
    }

    print("agreement (keep/drop decisions, gristmill vs datatrove):")
    for k, v in results["agreement"].items():
        if "confusion_gm_vs_dt" in v:
            en_txt = f" (LID=en docs: {100 * v['agree_frac_en']:.3f}%)" if v.get("agree_frac_en") is not None else ""
            print(f"  {k:<18} {100 * v['agree_frac']:.3f}%{en_txt}  confusion {v['confusion_gm_vs_dt']}")
            print(f"  {'':<18} gm drops/dt keeps: {v['gm_drop_dt_keep_top_gm_reasons'][:5]}")
            print(f"  {'':<18} dt drops/gm keeps: {v['gm_keep_dt_drop_top_dt_reasons'][:5]}")
        elif k == "langid_label":
            print(
                f"  {k:<18} {100 * v['agree_frac']:.3f}%  top pairs {v['top_label_pairs_gm_dt'][:5]} "
                f"({v['label_disagree_on_docs_longer_than_max_chars']} of {v['disagree']} on docs "
                f"> {lc.max_chars} chars)"
            )
        else:
            print(f"  {k:<18} {100 * v['agree_frac']:.3f}%  kept gm {v['gm_kept']} / dt {v['dt_kept']}")
    print(f"disagreement examples: {WORK.relative_to(REPO)}/disagreements_<filter>.jsonl")
    results["machine"]["loadavg_end"] = _loadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        print(f"results: {args.json}")
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git_revision() -> dict:
    import subprocess

    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD"), "pipelines_modified": git("status", "--porcelain", "--", "pipelines")}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
