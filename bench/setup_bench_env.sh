#!/usr/bin/env bash
# Create bench/.venv-bench: gristmill (editable) + datatrove 0.10.1, kept apart from the project's
# own dependencies (datatrove is a benchmark reference only, never a gristmill dependency).
# Gitignored by the top-level pattern `.venv-*/`. Re-running is safe (pip skips what is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=bench/.venv-bench
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# torch stays pinned by the project (torch==2.13.0, the CPU wheel on local disk).
"$VENV/bin/pip" install -q -e '.[test]'
# datatrove 0.10.1 declares xxhash<4 (project: xxhash>=3, so 3.x satisfies both).
# Gopher filters tokenise English with spaCy's blank('en') tokenizer (no model download).
"$VENV/bin/pip" install -q 'datatrove[processing]==0.10.1' 'xxhash>=3,<4'
"$VENV/bin/python" - <<'PY'
import datatrove, fasttext, spacy
from fasttext.FastText import _FastText  # noqa: F401  (datatrove's lid.py imports this)
from datatrove.utils.word_tokenizers import load_word_tokenizer
print("datatrove", datatrove.__version__ if hasattr(datatrove, "__version__") else "?",
      "| spacy", spacy.__version__, "| en tokenizer:", type(load_word_tokenizer("en")).__name__)
PY
echo "bench env ready: $VENV"
