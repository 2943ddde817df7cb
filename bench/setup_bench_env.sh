#!/usr/bin/env bash
# Create bench/.venv-bench: gristmill (editable, with the project's pinned versions) + datatrove 0.10.1
# as the reference implementation. datatrove is never a gristmill dependency; this venv is
# gitignored by the top-level pattern `.venv-*/`. Re-running is safe (pip skips what is installed).
#
# Deliberately NOT `datatrove[processing]`: that extra pulls fasttext-numpy2-wheel (which installs
# a second `fasttext` module over fasttext-predict's, so gristmill would no longer run on its own
# LID backend), trafilatura<1.12 (gristmill needs >=2) and xxhash<4. The three filters benchmarked
# need only spaCy (datatrove's English word tokenizer is spacy.blank("en"): no model download),
# regex and fasteners. datatrove's LanguageFilter is pointed at gristmill's lid.176.ftz through
# fasttext-predict by bench_clean.py (no download of lid.176.bin).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${BENCH_VENV:-bench/.venv-bench}
CONSTRAINTS=()
[ -f constraints.txt ] && CONSTRAINTS=(-c constraints.txt)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch stays pinned by the project (torch==2.13.0, the CPU wheel from local disk)
"$VENV/bin/python" -m pip install -q "${CONSTRAINTS[@]}" -e '.[test,bench]'
# the constraints keep datatrove's dependencies at the project's versions; orjson: datatrove's
# JsonlReader/JsonlWriter (bench_corpus.py's whole-job pipeline); faust-cchardet, python-magic, pyahocorasick, tldextract: its
# WarcReader (bench_ablate.py's FineWeb-style recipe)
"$VENV/bin/python" -m pip install -q "${CONSTRAINTS[@]}" datatrove==0.10.1 spacy==3.8.18 regex fasteners orjson \
    faust-cchardet python-magic pyahocorasick tldextract
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
import fasttext  # noqa: F401  (fasttext-predict)
from fasttext.FastText import _FastText  # noqa: F401  (what datatrove's lid.py loads)
from datatrove.utils.word_tokenizers import load_word_tokenizer
import orjson  # noqa: F401  (datatrove's JSONL reader and writer)
from gristmill.pipelines.langid import default_model_path
tok = load_word_tokenizer("eng")
assert tok.word_tokenize("Don't panic.") == ["Do", "n't", "panic", "."]
print("datatrove", version("datatrove"), "| spacy", version("spacy"), "| fasttext-predict",
      version("fasttext-predict"), "| en tokenizer", type(tok).__name__, "| LID model", default_model_path())
PY
echo "bench env ready: $VENV"
