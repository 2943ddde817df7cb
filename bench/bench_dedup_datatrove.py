"""datatrove's MinHash signature per document, timed; run by bench_dedup.py speed with the
interpreter of bench/.venv-bench (where datatrove is installed).

    bench/.venv-bench/bin/python bench/bench_dedup_datatrove.py DOCS.json [REPEAT]

What is timed is what MinhashDedupSignature.run does per document before writing:
``get_shingles(doc.text)`` (simplify_text → word_tokenize → 5-grams → xxhash64 each) and
``get_signature(shingles)`` ((a·h + b) mod 2^61-1, minimum per hash), with 16 buckets × 16 hashes
= 256 hashes. datatrove 0.10.1's default hash (xxhash64 of the n-gram *str*) raises
"TypeError: Strings must be encoded before hashing" with xxhash 4.x (installed: 4.1.0), so when
that happens its hash function is replaced by xxh64 of the UTF-8 bytes (what xxhash < 4 did).
Printed: one JSON line {"version", "rows": [{"name", "seconds", "note"}]}.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
logging.disable(logging.WARNING)


def best_of(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    import datatrove
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.word_tokenizers import WhitespaceTokenizer, WordTokenizer

    class SplitTokenizer(WordTokenizer):
        """Plain str.split(): after simplify_text (punctuation → spaces) this is whitespace tokenising."""

        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    docs = json.load(open(sys.argv[1]))
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    cfg = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=16)
    out = tempfile.mkdtemp()
    rows = []
    import xxhash
    from datatrove.utils.hashing import HashConfig

    def xxh64_str(s):  # datatrove passes str; xxhash >= 4 only hashes bytes (see module doc)
        return xxhash.xxh64_intdigest(s.encode("utf-8"))

    sha1_cfg = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=16, hash_config=HashConfig(hash_fc="sha1"))
    for label, tok, c in (("eng default (spaCy 'en'), xxh64", "eng", cfg),
                          ("WhitespaceTokenizer (spaCy 'xx'), xxh64", WhitespaceTokenizer(), cfg),
                          ("str.split tokenizer, xxh64", SplitTokenizer(), cfg),
                          ("str.split tokenizer, sha1", SplitTokenizer(), sha1_cfg)):
        step = MinhashDedupSignature(output_folder=out, config=c, language=tok)
        if c.hash_config.hash_fc == "xxhash":
            try:
                step._hash_func("probe")
            except TypeError:
                step._hash_func = xxh64_str
                label += "*"
        for t in docs[:10]:  # warm-up: loads spaCy, draws parameters
            step.get_signature(step.get_shingles(t))

        def full(step=step):
            for t in docs:
                sh = step.get_shingles(t)
                if sh.size:
                    step.get_signature(sh)

        def shingles_only(step=step):
            return [step.get_shingles(t) for t in docs]

        slow = not label.startswith("str.split")  # spaCy: ~50 docs/s, one timing is enough
        rows.append({"name": f"datatrove {label}", "seconds": best_of(full, 1 if slow else repeat)})
        rows.append({"name": f"  datatrove {label}: get_shingles",
                     "seconds": best_of(shingles_only, 1 if slow else repeat)})
        if label.startswith("str.split tokenizer, xxh64"):
            shingles = shingles_only()

            def signatures_only(step=step, shingles=shingles):
                return [step.get_signature(s) for s in shingles if s.size]

            rows.append({"name": "  datatrove get_signature only (shingles given)",
                         "seconds": best_of(signatures_only, repeat)})
    try:
        from gristmill.dedupe import minhash as mh

        for t in docs[:20]:
            mh.text_signature(t, 5, 256, 1)
        rows.append({"name": "[datatrove venv] gristmill text_signature",
                     "seconds": best_of(lambda: [mh.text_signature(t, 5, 256, 1) for t in docs], repeat)})
    except Exception as e:  # noqa: BLE001
        rows.append({"name": "[datatrove venv] gristmill unavailable", "seconds": float("nan"), "note": repr(e)})
    print(json.dumps({"version": datatrove.__version__ if hasattr(datatrove, "__version__") else "?", "rows": rows}))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
