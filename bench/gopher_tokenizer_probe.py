"""Why gristmill's Gopher decisions differ from datatrove's, and what would close the gap.

Runs datatrove's GopherQualityFilter / GopherRepetitionFilter and re-implementations of gristmill's
rules fed with different word tokenisations, on every ``--step``-th document of the benchmark input
(built by bench_clean.py), and prints keep/drop agreement with datatrove for each variant:

* ``current``          pipelines.filters as it is (its config defaults)
* ``spacy-tokens``     the rules fed with datatrove's own (spaCy) tokens: isolates non-tokeniser causes
* ``regex-\\w``         ``\\w+|[^\\w\\s]+`` with the ``regex`` module, whose ``\\w`` includes combining marks
* ``spacy-like``       SPACY_LIKE below: a regex approximation of spaCy's English tokenizer

``ref-top`` variants score the top n-gram even when it occurs once (datatrove, Dolma and the paper's
definition); the others only when it repeats (gristmill before ``top_ngram_min_count``).

    bench/.venv-bench/bin/python bench/gopher_tokenizer_probe.py --step 8
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import regex

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_clean (gristmill itself is installed)

from bench_clean import cached_docs

from gristmill.config import GristmillConfig
from gristmill.pipelines import filters


def spacy_like_tokens(text: str) -> list[str]:
    """The spaCy-like tokenizer this probe measured, now gristmill's own (pipelines/filters.py)."""
    return list(filters.tokenize_words(text))


_MARKS_WORD_RE = regex.compile(r"\w+|[^\w\s]+")
_LETTER_RE = regex.compile(r"[^\W\d_]")
_WORDCH_RE = regex.compile(r"\w")


def quality_from_tokens(text: str, tokens: list[str], cfg) -> str | None:
    """gristmill's gopher_quality with datatrove's counting: words = tokens with a word character,
    ratios over all tokens, alpha = tokens containing a letter."""
    words = [t for t in tokens if _WORDCH_RE.search(t)]
    n_words, n_tokens = len(words), len(tokens)
    if cfg.min_doc_words and n_words < cfg.min_doc_words:
        return "short_doc"
    if cfg.max_doc_words and n_words > cfg.max_doc_words:
        return "long_doc"
    mean_len = sum(map(len, words)) / n_words
    if mean_len < cfg.min_avg_word_length:
        return "mean_word_length_low"
    if mean_len > cfg.max_avg_word_length:
        return "mean_word_length_high"
    if text.count("#") / n_tokens > cfg.max_symbol_word_ratio:
        return "too_many_hashes"
    if (text.count("...") + text.count("…")) / n_tokens > cfg.max_symbol_word_ratio:
        return "too_many_ellipsis"
    lines = text.splitlines() or [text]
    if sum(1 for s in lines if s.lstrip().startswith(("•", "-"))) / len(lines) > cfg.max_bullet_lines_ratio:
        return "too_many_bullets"
    if sum(1 for s in lines if s.rstrip().endswith(("...", "…"))) / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "too_many_end_ellipsis"
    if sum(1 for t in tokens if _LETTER_RE.search(t)) / n_tokens < cfg.min_alpha_words_ratio:
        return "alpha_words_low"
    if len(set(cfg.stop_words).intersection(tokens)) < cfg.min_stop_words:
        return "too_few_stop_words"
    return None


def _top_ngram_chars(words: list[str], n: int, min_count: int) -> int:
    grams = Counter(zip(*(words[i:] for i in range(n))))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return 0 if count < min_count else (sum(map(len, gram)) + n - 1) * count


def _duplicates(items: list[str]) -> tuple[int, int]:
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for x in items:
        if x in seen:
            dup_items += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return dup_items, dup_chars


def _dup_ngram_chars(words: list[str], n: int) -> int:
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


_PARAGRAPH_RE = regex.compile(r"\n{2,}")
_LINES_RE = regex.compile(r"\n+")


def repetition_from_tokens(text: str, words: list[str], cfg, ref_top: bool) -> str | None:
    """Gopher repetition (Table A1) on the given tokens. ref_top: the most frequent n-gram is scored
    even when it occurs once (datatrove, Dolma, the paper); otherwise only if it repeats."""
    n_chars = len(text)
    paragraphs = _PARAGRAPH_RE.split(text.strip())
    d, c = _duplicates(paragraphs)
    if d / len(paragraphs) > cfg.dup_para_frac:
        return "dup_para_frac"
    if c / n_chars > cfg.dup_para_char_frac:
        return "dup_para_char_frac"
    lines = _LINES_RE.split(text)
    d, c = _duplicates(lines)
    if d / len(lines) > cfg.dup_line_frac:
        return "dup_line_frac"
    if c / n_chars > cfg.dup_line_char_frac:
        return "dup_line_char_frac"
    for n, frac in cfg.top_n_grams:
        if len(words) >= n and _top_ngram_chars(words, n, 1 if ref_top else 2) / n_chars > frac:
            return f"top_{n}_gram"
    for n, frac in cfg.dup_n_grams:
        if len(words) >= n and _dup_ngram_chars(words, n) / n_chars > frac:
            return f"dup_{n}_gram"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--step", type=int, default=8, help="use every STEP-th document")
    args = ap.parse_args(argv)

    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.text import split_into_words

    docs = cached_docs(args.docs, args.seed)[:: args.step]
    cfg = GristmillConfig().clean
    gq, gr = cfg.gopher_quality, cfg.gopher_repetition
    dq_f, dr_f = GopherQualityFilter(), GopherRepetitionFilter()
    ref = []
    for d in docs:
        doc = Document(text=d["text"], id=d["id"])
        q, r = dq_f.filter(doc), dr_f.filter(doc)
        ref.append((q is True, r is True, split_into_words(d["text"], "eng")))
    print(f"{len(docs)} documents (every {args.step}th); agreement with datatrove keep/drop decisions")

    tokenizers = {
        "spacy-tokens": None,
        "regex-\\w": _MARKS_WORD_RE.findall,
        "spacy-like": spacy_like_tokens,
    }
    rows = [
        (
            "current",
            lambda t, _: filters.gopher_quality(t, gq).reason,
            lambda t, _: filters.gopher_repetition(t, gr).reason,
            filters.tokenize_words,
        )
    ]
    for name, tok in tokenizers.items():
        for ref_top in (False, True):
            label = f"{name}{' ref-top' if ref_top else ''}"
            if tok is None:
                rows.append(
                    (
                        label,
                        lambda t, s: quality_from_tokens(t, s, gq),
                        lambda t, s, rt=ref_top: repetition_from_tokens(t, s, gr, rt),
                        None,
                    )
                )
            else:
                rows.append(
                    (
                        label,
                        lambda t, _, k=tok: quality_from_tokens(t, k(t), gq),
                        lambda t, _, k=tok, rt=ref_top: repetition_from_tokens(t, k(t), gr, rt),
                        tok,
                    )
                )
    for label, fq, fr, tok in rows:
        aq = ar = 0
        for d, (kq, kr, spacy_toks) in zip(docs, ref):
            aq += (fq(d["text"], spacy_toks) is None) == kq
            ar += (fr(d["text"], spacy_toks) is None) == kr
        cost = ""
        if tok is not None:
            t0 = time.perf_counter()
            for d in docs:
                tok(d["text"])
            cost = f"  tokenize {1000 * (time.perf_counter() - t0) / len(docs):.3f} ms/doc"
        print(f"  {label:<24} quality {100 * aq / len(docs):6.2f}%   repetition {100 * ar / len(docs):6.2f}%{cost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
