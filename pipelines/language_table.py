"""Per-language thresholds of the cleaning rules from a published table (``clean.language_table``).

``fineweb2``: the values FineWeb-2 (Penedo et al. 2025) tuned per language for its Gopher, FineWeb
and repetition filters, as published in huggingface/fineweb-2 ``configs/{lang}_{script}.yml``
(pipelines/resources/fineweb2: the values, their commit and the language mapping). English has no
FineWeb-2 entry: it keeps the sections' own values, FineWeb's. FineWeb-2's ``language_score`` is a
GlotLID confidence and is not applied to lid.176's scores.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

TABLE_DIR = Path(__file__).parent / "resources" / "fineweb2"

#: FineWeb-2's key → (gristmill rule, setting). Keys not listed are kept in the table but not applied.
FINEWEB2_KEYS: dict[str, tuple[str, str]] = {
    "dup_line_frac": ("gopher_repetition", "dup_line_frac"),
    "dup_para_frac": ("gopher_repetition", "dup_para_frac"),
    "dup_line_char_frac": ("gopher_repetition", "dup_line_char_frac"),
    "dup_para_char_frac": ("gopher_repetition", "dup_para_char_frac"),
    "top_n_grams": ("gopher_repetition", "top_n_grams"),
    "dup_n_grams": ("gopher_repetition", "dup_n_grams"),
    "min_doc_words": ("gopher_quality", "min_doc_words"),
    "max_doc_words": ("gopher_quality", "max_doc_words"),
    "min_avg_word_length": ("gopher_quality", "min_avg_word_length"),
    "max_avg_word_length": ("gopher_quality", "max_avg_word_length"),
    # datatrove's name for the minimum share of words with a letter (its check is `ratio < value`)
    "max_non_alpha_words_ratio": ("gopher_quality", "min_alpha_words_ratio"),
    "min_stop_words": ("gopher_quality", "min_stop_words"),
    "stopwords": ("gopher_quality", "stop_words"),
    "line_punct_thr": ("fineweb_quality", "line_punct_thr"),
    "short_line_thr": ("fineweb_quality", "short_line_thr"),
    "char_duplicates_ratio": ("fineweb_quality", "char_duplicates_ratio"),
    "new_line_ratio": ("fineweb_quality", "new_line_ratio"),
}


#: table values not applied, per language, and why
NOT_APPLIED: dict[str, dict[str, str]] = {
    "th": {"max_non_alpha_words_ratio": "FineWeb-2's 0.9 share of words with a letter drops 31 of 40 documents of "
                                        "Leipzig Thai news sentences (quotes, Thai digits); the section's 0.8 drops 8 "
                                        "(bench/bench_languages.py)"},
    "ko": {"stopwords": "FineWeb-2's Korean stop words are particles (의, 는, 에 ...) that its tokenizer (Kiwi) "
                        "splits off words; gristmill splits Korean at spaces, where they never stand alone"},
}


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


@lru_cache(maxsize=2)
def load(name: str) -> dict[str, dict[str, dict[str, Any]]]:
    """{rule: {lang: {setting: value}}} of a named table ("none": empty)."""
    if name == "none":
        return {}
    if name != "fineweb2":
        raise ValueError(f"unknown language table {name!r}")
    data = json.loads((TABLE_DIR / "thresholds.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for lang, values in data["languages"].items():
        for key, value in values.items():
            if key in FINEWEB2_KEYS and key not in NOT_APPLIED.get(lang, {}):
                rule, setting = FINEWEB2_KEYS[key]
                out.setdefault(rule, {}).setdefault(lang, {})[setting] = _tuples(value)
    return out


def languages(name: str) -> list[str]:
    """The languages a table has values for."""
    return sorted({lang for rule in load(name).values() for lang in rule})
