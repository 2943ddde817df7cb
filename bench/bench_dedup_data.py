"""Data for bench/bench_dedup.py: real documents from /work/shared/data, ~1000-word chunks, a
controlled-edit near-duplicate set and synthetic corpora for the scale runs. Everything is seeded
and deterministic (random.Random(seed), files read in a fixed order).

Interpreter-neutral (stdlib only): bench_dedup_datatrove.py, run by the other venv, imports it too.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import re
from functools import lru_cache
from pathlib import Path

SHARED = Path(os.environ.get("GRISTMILL_SHARED", "/work/shared/data"))

_TOKEN = re.compile(r"\S+\s*")  # a whitespace token with its trailing whitespace (joins back exactly)

#: boilerplate lines added to variants (web page furniture); 4-12 words each
BOILERPLATE = [
    "Subscribe to our newsletter to get the latest updates delivered to your inbox.",
    "This website uses cookies to improve your experience. Accept all cookies.",
    "Share this article on Facebook, Twitter, LinkedIn or by email.",
    "Copyright 2024 All rights reserved. Terms of use and privacy policy.",
    "Click here to read more stories like this one.",
    "Advertisement - continue reading below.",
    "Related posts: you may also like the following articles.",
    "Posted by admin in Uncategorized | Leave a comment",
    "Home > News > Archive > Page 2",
    "Sign in or create an account to post comments.",
    "Print this page | Download PDF | Report an error",
    "Follow us on Instagram and YouTube for more content.",
    "Free shipping on all orders over fifty dollars this week only.",
    "Skip to main content. Menu. Search this site.",
    "Previous article Next article Back to top",
    "Tags: history, culture, society, featured, editor's picks",
    "Last updated on March 3, 2021 at 10:15 am.",
    "Join thousands of readers who get our weekly digest.",
    "Disclaimer: the views expressed here are those of the author alone.",
    "Comments are closed for this post.",
]


def _read_jsonl(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _strip_gutenberg(text: str) -> str:
    start = re.search(r"\*\*\* ?START OF[^\n]*\n", text)
    end = re.search(r"\*\*\* ?END OF", text)
    if start and end and end.start() > start.end():
        return text[start.end() : end.start()]
    return text


@lru_cache(maxsize=1)
def long_texts() -> tuple[tuple[str, str], ...]:
    """(name, text) of the long real texts: 4 Gutenberg books, tiny Shakespeare, 65 State of the
    Union and 59 inaugural addresses."""
    out = []
    for p in sorted((SHARED / "text").glob("pg*.txt")):
        out.append((p.stem, _strip_gutenberg(p.read_text(encoding="utf-8"))))
    out.append(("tinyshakespeare", (SHARED / "text/tinyshakespeare_input.txt").read_text(encoding="utf-8")))
    for name in ("nltk_state_union_1945_2006.jsonl", "nltk_inaugural_addresses.jsonl"):
        for r in _read_jsonl(SHARED / "text" / name):
            out.append((r["id"], r["text"]))
    return tuple(out)


@lru_cache(maxsize=1)
def web_texts() -> tuple[tuple[str, str], ...]:
    """(id, text) of the real web documents: Dolma CC (697), CCNet (20), OSCAR (649, 166 languages)."""
    out = []
    web = SHARED / "web"
    for i, r in enumerate(_read_jsonl(web / "dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz")):
        out.append((f"dolma-{i:04d}", r["text"]))
    for name in ("dolma_ccnet_cc_en_head-0091.jsonl", "dolma_ccnet_cc_en_head-0174.jsonl"):
        for i, r in enumerate(_read_jsonl(web / name)):
            out.append((f"{name[6:-6]}-{i:02d}", r["text"]))
    for r in _read_jsonl(web / "oscar2019_hf_dummy_multilingual.jsonl"):
        out.append((f"oscar-{r['id']}", r["text"]))
    return tuple(out)


def gutenberg_editions() -> list[dict]:
    return list(_read_jsonl(SHARED / "neardup/gutenberg_edition_clusters.jsonl.gz"))


def chunks(text: str, words: int = 1000, min_words: int | None = None) -> list[str]:
    """Consecutive pieces of ``words`` whitespace tokens (original whitespace kept); the last piece
    is kept if it has at least ``min_words`` (default words // 2)."""
    toks = _TOKEN.findall(text.lstrip())
    min_words = words // 2 if min_words is None else min_words
    out = []
    for s in range(0, len(toks), words):
        piece = toks[s : s + words]
        if len(piece) >= min_words:
            out.append("".join(piece).strip())
    return out


def speed_docs(n: int = 2000, words: int = 1000, seed: int = 0) -> list[str]:
    """~``words``-word real documents: chunks of the long texts and of the web text stream (web
    documents concatenated in file order, then cut), ``n`` of them drawn without replacement."""
    pool = []
    for _, t in long_texts():
        pool.extend(chunks(t, words, min_words=int(words * 0.9)))
    web_stream = "\n\n".join(t for _, t in web_texts())
    pool.extend(chunks(web_stream, words, min_words=int(words * 0.9)))
    rng = random.Random(seed)
    rng.shuffle(pool)
    return pool[:n]


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Word tokens of the English texts, with repeats (sampling from it is frequency-weighted)."""
    words = []
    for _, t in long_texts():
        words.extend(re.findall(r"[A-Za-z]+", t))
    return tuple(words)


def edit(text: str, rate: float, rng: random.Random, mix=(1 / 3, 1 / 3, 1 / 3), boilerplate: int = 0) -> str:
    """Random word-level edits: round(rate × words) operations at random positions, each an
    insertion / deletion / substitution with probabilities ``mix`` (inserted and substituted words
    are drawn from the corpus vocabulary); then ``boilerplate`` lines added at the top or bottom."""
    toks = _TOKEN.findall(text)
    vocab = vocabulary()
    k = int(round(rate * len(toks)))
    for _ in range(k):
        if not toks:
            break
        op = rng.choices(("ins", "del", "sub"), weights=mix)[0]
        i = rng.randrange(len(toks))
        if op == "ins":
            toks.insert(i, rng.choice(vocab) + " ")
        elif op == "del" and len(toks) > 1:
            del toks[i]
        else:
            tail = toks[i][len(toks[i].rstrip()) :] or " "
            toks[i] = rng.choice(vocab) + tail
    out = "".join(toks)
    for _ in range(boilerplate):
        line = rng.choice(BOILERPLATE)
        out = f"{line}\n{out}" if rng.random() < 0.5 else f"{out}\n{line}"
    return out


def rate_for_jaccard(j: float, n: int = 5) -> float:
    """Per-word edit rate that leaves about ``j`` 5-gram Jaccard: a shingle survives when none of
    its n words is edited, s = (1-p)^n, and J = s / (2 - s)."""
    s = 2 * j / (1 + j)
    return 1 - s ** (1 / n)


def controlled_edit_set(seed: int = 0, n_book: int = 500, n_web: int = 500, variant_share: float = 0.6,
                        big_family: int = 0, big_j: float = 0.9) -> list[dict]:
    """Near-duplicate set with controlled edits.

    Bases: ``n_book`` ~1000-word chunks of the long texts and ``n_web`` real web documents of at
    least 100 whitespace words (cut at 2000), exact repeats removed. A share ``variant_share`` of
    the bases get 1-3 variants: target Jaccard uniform in [0.5, 1.0] (10% untouched copies), turned
    into an edit rate (rate_for_jaccard) split at random between insertions, deletions and
    substitutions, and 0-3 boilerplate lines with probability 1/2; 30% of variants edit an earlier
    variant instead of the base (chains). The rest are unrelated documents. ``big_family`` > 0 adds
    one base with that many variants at target Jaccard 0.9 with the base (buckets larger than
    dedupe.components.ALL_PAIRS_MAX). Returns documents in random order with ids ce-00000…;
    fields family, parent, target_j, rate.
    """
    rng = random.Random(seed)
    book_pool = [c for _, t in long_texts() for c in chunks(t, 1000, min_words=900)]
    rng.shuffle(book_pool)
    seen, web_pool = set(), []
    for _, t in web_texts():
        toks = _TOKEN.findall(t)
        key = " ".join(t.split()).lower()
        if len(toks) >= 100 and key not in seen:
            seen.add(key)
            web_pool.append("".join(toks[:2000]).strip())
    rng.shuffle(web_pool)
    bases = [("book", t) for t in book_pool[:n_book]] + [("web", t) for t in web_pool[:n_web]]
    docs = []
    for fam, (kind, text) in enumerate(bases):
        family = [{"text": text, "family": fam, "kind": kind, "parent": None, "target_j": 1.0, "rate": 0.0}]
        if rng.random() < variant_share:
            for _ in range(rng.randint(1, 3)):
                parent = rng.choice(family[1:]) if len(family) > 1 and rng.random() < 0.3 else family[0]
                tj = 1.0 if rng.random() < 0.1 else rng.uniform(0.5, 1.0)
                rate = rate_for_jaccard(tj)
                mix = [rng.random() for _ in range(3)]
                bp = rng.randint(1, 3) if rng.random() < 0.5 else 0
                family.append({"text": edit(parent["text"], rate, rng, mix, bp), "family": fam, "kind": kind,
                               "parent": family.index(parent), "target_j": tj, "rate": rate})
        docs.extend(family)
    if big_family:
        fam = len(bases)
        text = web_pool[n_web] if len(web_pool) > n_web else book_pool[n_book]
        docs.append({"text": text, "family": fam, "kind": "big", "parent": None, "target_j": 1.0, "rate": 0.0})
        for _ in range(big_family):
            docs.append({"text": edit(text, rate_for_jaccard(big_j), rng), "family": fam, "kind": "big",
                         "parent": 0, "target_j": big_j, "rate": rate_for_jaccard(big_j)})
    rng.shuffle(docs)
    for i, d in enumerate(docs):
        d["id"] = f"ce-{i:05d}"
    return docs


# --- synthetic corpora for the scale runs ------------------------------------------------------

_SENT = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


@lru_cache(maxsize=1)
def sentence_pool() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Sentences (4-60 whitespace words, whitespace collapsed) of every long and web text, with
    their word counts."""
    sents, counts = [], []
    texts = [t for _, t in long_texts()] + [t for _, t in web_texts()]
    for t in texts:
        for s in _SENT.split(t):
            w = s.split()
            if 4 <= len(w) <= 60:
                sents.append(" ".join(w))
                counts.append(len(w))
    return tuple(sents), tuple(counts)


def synth_corpus(n: int, seed: int = 0, dup_share: float = 0.1, words=(200, 300)):
    """Yields ``n`` documents {"id", "text", "dup_of"} of ``words`` words made of random sentences
    from :func:`sentence_pool` (so unrelated documents share only the odd sentence); a share
    ``dup_share`` are edited copies (edit rate uniform in [0, 0.03], boilerplate with probability
    1/3) of one of the last 1000 documents."""
    rng = random.Random(seed)
    sents, counts = sentence_pool()
    recent: list[tuple[int, str]] = []
    for i in range(n):
        if recent and rng.random() < dup_share:
            j, src = rng.choice(recent)
            text = edit(src, rng.uniform(0.0, 0.03), rng, boilerplate=rng.randint(1, 2) if rng.random() < 1 / 3 else 0)
            dup_of = j
        else:
            target = rng.randint(*words)
            parts, w = [], 0
            while w < target:
                k = rng.randrange(len(sents))
                parts.append(sents[k])
                w += counts[k]
            text = " ".join(parts)
            dup_of = None
        if len(recent) < 1000:
            recent.append((i, text))
        else:
            recent[rng.randrange(1000)] = (i, text)
        yield {"id": f"syn-{i:08d}", "text": text, "dup_of": dup_of}


def write_synth(n: int, out_dir: Path, seed: int = 0, shards: int | None = None) -> list[Path]:
    """Writes synth_corpus(n) as gristmill documents to JSONL shards (≤ 50k documents each)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = shards or max(1, math.ceil(n / 50_000))
    per = math.ceil(n / shards)
    paths, f, written = [], None, 0
    for doc in synth_corpus(n, seed):
        if written % per == 0:
            if f:
                f.close()
            paths.append(out_dir / f"part-{len(paths):04d}.jsonl")
            f = open(paths[-1], "w", encoding="utf-8")
        rec = {"id": doc["id"], "text": doc["text"], "url": None, "source": "synth", "crawl_date": None,
               "lang": None, "lang_score": None, "signals": {}, "reason": None, "detail": None}
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        written += 1
    if f:
        f.close()
    return paths
