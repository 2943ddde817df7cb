"""Per-language counts: documents kept by the previous default recipe and by the current one.

The previous default (before FineWeb's recipe became the default) applied Gopher quality and C4 (with
its terminal-punctuation line rule) to English only, no FineWeb quality rule and no language table.
The current default applies every rule to every language with per-language settings and segments
Chinese, Japanese and Thai. Inputs (real text, ../shared/data):

* ``lid``: Leipzig corpora sentences (lingua's test data), 75 languages: every 16 consecutive sentences
  of a language make a document of 4 lines of 4 sentences (real prose, mostly news and web);
* ``oscar``: OSCAR 2019 web text excerpts (Common Crawl), 166 languages, 649 documents: counted by the
  language the language-ID model gives each document.

Speed of the segmenters is measured on the Leipzig sentences of zh, ja and th (one core).

    .venv/bin/python bench/bench_languages.py      # prints the tables of docs/corpus.md (markdown)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

from gristmill.config import GristmillConfig
from gristmill.documents import new_document
from gristmill.pipelines import words
from gristmill.pipelines.clean import Cleaner

DATA = Path(os.environ.get("GRISTMILL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PREVIOUS_DEFAULT = {"clean": {
    "language_table": "none",
    "gopher_quality": {"languages": ["en"]},
    "c4_lines": {"languages": ["en"], "require_terminal_punctuation": True},
    "fineweb_quality": {"enabled": False},
}}
NO_SPACES = ("zh", "ja", "th")


def leipzig_docs(per_line: int = 4, lines: int = 4, max_docs: int = 40) -> dict[str, list[str]]:
    sentences: dict[str, list[str]] = collections.defaultdict(list)
    with open(DATA / "lid" / "lingua_testdata_sentences.tsv", encoding="utf-8") as f:
        next(f)
        for row in f:
            lang, _, text = row.rstrip("\n").partition("\t")
            sentences[lang].append(text)
    out = {}
    for lang, sents in sorted(sentences.items()):
        sep = "" if lang in ("zh", "ja") else " "
        n = per_line * lines
        out[lang] = [
            "\n".join(sep.join(sents[d * n + i * per_line: d * n + (i + 1) * per_line]) for i in range(lines))
            for d in range(min(max_docs, len(sents) // n))
        ]
    return out


def oscar_docs() -> list[str]:
    with open(DATA / "web" / "oscar2019_hf_dummy_multilingual.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def verdicts(cleaner: Cleaner, texts: list[str]) -> list[tuple[str | None, str | None]]:
    """(language, drop reason or None) per text."""
    out = []
    for i, text in enumerate(texts):
        d = cleaner.process(new_document(str(i), text, "bench"))
        out.append((d.get("lang"), d["reason"]))
    return out


def segmenter_speed() -> dict[str, float]:
    docs = leipzig_docs(max_docs=10_000)
    out = {}
    for lang in NO_SPACES:
        text = "\n".join(docs[lang])
        words.tokens_of("warm up " + text[:200], lang)
        t = time.perf_counter()
        words.tokens_of(text, lang)
        out[lang] = len(text) / (time.perf_counter() - t) / 1e6
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args(argv)
    previous, current = Cleaner(GristmillConfig.model_validate(PREVIOUS_DEFAULT)), Cleaner(GristmillConfig())

    print("## Leipzig sentences (../shared/data/lid), documents of 16 sentences\n")
    print("| language | documents | kept, previous default | kept, current (every language) | drops (current) |")
    print("|---|---|---|---|---|")
    totals = collections.Counter()
    for lang, texts in leipzig_docs().items():
        before, after = verdicts(previous, texts), verdicts(current, texts)
        kept_b = sum(1 for _, r in before if r is None)
        kept_a = sum(1 for _, r in after if r is None)
        # documents the language-ID model does not give this language are dropped alike by both recipes
        reasons = collections.Counter(r for _, r in after if r and not r.startswith("langid"))
        totals.update({"docs": len(texts), "before": kept_b, "after": kept_a})
        top = ", ".join(f"{r} {k}" for r, k in reasons.most_common(3))
        print(f"| {lang} | {len(texts)} | {kept_b} | {kept_a} | {top} |")
    print(f"| all | {totals['docs']} | {totals['before']} | {totals['after']} | |\n")

    print("## OSCAR 2019 excerpts (../shared/data/web), by detected language\n")
    texts = oscar_docs()
    before, after = verdicts(previous, texts), verdicts(current, texts)
    by_lang: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (lang, rb), (_, ra) in zip(before, after):
        key = lang if lang in NO_SPACES + ("ko", "en") else "other"
        by_lang[key].update({"docs": 1, "before": rb is None, "after": ra is None})
        if ra and rb is None:
            by_lang[key][f"newly dropped: {ra}"] += 1
    print("| language | documents | kept, previous default | kept, current | newly dropped by |")
    print("|---|---|---|---|---|")
    for key in sorted(by_lang, key=lambda k: (k == "other", k)):
        c = by_lang[key]
        newly = ", ".join(f"{k.split(': ')[1]} {v}" for k, v in c.most_common() if k.startswith("newly"))[:200]
        print(f"| {key} | {c['docs']} | {c['before']} | {c['after']} | {newly} |")
    speed = segmenter_speed()
    print("\nsegmenters (M characters/s, one core): " + ", ".join(f"{k} {v:.2f}" for k, v in speed.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
