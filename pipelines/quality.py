"""Scoring documents with the quality classifier (pipelines/quality_model.py trains it) and choosing
what to keep: pure functions; the corpus pipeline wraps them.

Two ways to keep documents, per language:

* ``threshold``: keep a document whose score is at least the language's threshold — decided per
  document, in the cleaning chain.
* ``top_fraction``: keep the best-scoring fraction of each language. That needs every score first,
  so scores are counted into a fixed histogram per language (:data:`BINS` bins of the score's
  log-odds over ±:data:`LOGIT_RANGE`: a classifier this confident puts most crawl text below
  P = 0.001, where bins of the probability would not separate anything; bounded memory, merged
  exactly in any order, hence deterministic on any runner), and the cut is the lowest bin above which
  at least the fraction lies (:func:`top_fraction_cut`); documents of the cut's bin are all kept, so
  the kept share is the fraction rounded up to a whole bin.
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from gristmill.errors import GristmillError
from gristmill.pipelines import quality_model

#: histogram bins of the scores' log-odds per language (cut resolution 0.032 in log-odds)
BINS = 1000
LOGIT_RANGE = 16.0
#: the classifier shipped with gristmill (trained by `gristmill quality train` on ../shared/data;
#: pipelines/resources/quality/report.md says on what and how well)
SHIPPED_MODEL = Path(__file__).resolve().parent / "resources" / "quality" / "model.bin"
#: significant digits kept of a score, so that float32 arithmetic on another CPU gives the same decisions
SCORE_DIGITS = 6


class QualityError(GristmillError, ValueError):
    """A quality model that cannot be used; the message names the file and what to use instead."""


class QualityScorer:
    """P(__label__hq) of documents, with the text prepared exactly as the model was trained."""

    def __init__(self, path: str | None = None):
        self.path = str(path or SHIPPED_MODEL)
        if not os.path.isfile(self.path):
            raise QualityError(f"quality model not found: {self.path} (set quality.model, or train one with "
                               "`gristmill quality train`)")
        head = quality_model.read_fasttext_header(self.path)
        want = quality_model.LABEL_PREFIX + quality_model.POSITIVE
        if not head["supervised"] or want not in head["labels"]:
            shown = ", ".join(head["labels"][:5]) + (", …" if len(head["labels"]) > 5 else "")
            raise QualityError(f"{self.path} is a fastText model with the labels {shown}, not a quality classifier "
                               f"(it needs {want}): train one with `gristmill quality train`")
        self.max_words = _max_words(self.path)
        self.model = _load(self.path)
        self.label = want

    def score(self, text: str) -> float:
        line = quality_model.prepare(text, self.max_words)
        if not line:
            return 0.0
        labels, probs = self.model.predict(line, k=-1)
        for label, p in zip(labels, probs):
            if label == self.label:
                # fastText's predict returns p + 1e-5 (log(p + 1e-5), then exp): take it back off
                return float(f"{min(max(float(p) - 1e-5, 0.0), 1.0):.{SCORE_DIGITS}g}")
        return 0.0


@lru_cache(maxsize=4)
def _load(path: str):
    import fasttext

    try:
        return fasttext.load_model(path)
    except Exception as e:  # noqa: BLE001 - fastText raises plain ValueError/RuntimeError
        raise QualityError(f"{path} is not a loadable fastText model: {e}") from e


def _max_words(path: str) -> int:
    """The words per document the model was trained on (its metadata.json), else the default."""
    meta = Path(path).with_name("metadata.json")
    try:
        return int(json.loads(meta.read_text())["params"]["max_words"])
    except (OSError, ValueError, KeyError, TypeError):
        return quality_model.TrainParams().max_words


def score_bin(score: float) -> int:
    p = min(max(score, 1e-12), 1 - 1e-12)
    x = math.log(p / (1 - p))
    return min(max(int((x + LOGIT_RANGE) / (2 * LOGIT_RANGE) * BINS), 0), BINS - 1)


def bin_floor(b: int) -> float:
    """The lowest score of bin ``b`` (0 for the first)."""
    if b <= 0:
        return 0.0
    x = b / BINS * 2 * LOGIT_RANGE - LOGIT_RANGE
    return 1 / (1 + math.exp(-x))


def histogram(scores) -> np.ndarray:
    h = np.zeros(BINS, dtype=np.int64)
    for s in scores:
        h[score_bin(s)] += 1
    return h


def top_fraction_cut(hist: np.ndarray, fraction: float) -> int:
    """The lowest bin kept so that at least ``fraction`` of the documents are kept (0: keep all)."""
    total = int(hist.sum())
    if total == 0 or fraction >= 1:
        return 0
    need = fraction * total
    above = np.cumsum(hist[::-1])  # documents in bins >= BINS-1-k
    k = int(np.searchsorted(above, need - 1e-9))
    return max(BINS - 1 - k, 0)


def keep_by_bin(score: float, cut: int) -> bool:
    return score_bin(score) >= cut


def histogram_summary(hist: np.ndarray, bins: int = 20) -> list[dict]:
    """The histogram folded to ``bins`` bins (for the manifest and the report): each with the lowest
    score it holds and its documents."""
    width = BINS // bins
    folded = np.asarray(hist).reshape(bins, width).sum(axis=1)
    return [{"from": float(f"{bin_floor(k * width):.6g}"), "documents": int(n)} for k, n in enumerate(folded)]


# ---------------------------------------------------------------------------------------------
# The decision in the corpus pipeline (a pure function of the document, the config and the cuts)
# ---------------------------------------------------------------------------------------------

REASON = "quality:low_score"


def cut_of(lang: str, cfg, cuts: dict[str, int]) -> float:
    """The lowest score a document of ``lang`` keeps: the threshold, or with ``top_fraction`` the
    floor of the cut's bin (computed by the run from the language's histogram)."""
    if cfg.top_fraction is None:
        return cfg.cut_value(lang)
    return bin_floor(cuts.get(lang, 0))


def mark(doc: dict, cfg, cuts: dict[str, int]) -> dict:
    """Drop a scored document below its language's cut as ``quality:low_score``; unscored documents
    (other languages, or already dropped) pass unchanged."""
    score = (doc.get("signals") or {}).get("quality_score")
    if score is None or doc.get("reason"):
        return doc
    lang = doc.get("lang") or ""
    keep = score_bin(score) >= cuts.get(lang, 0) if cfg.top_fraction is not None else score >= cfg.cut_value(lang)
    if keep:
        return doc
    # a new dict: Beam hands the same object to every consumer of a PCollection (never mutate inputs)
    return {**doc, "reason": REASON, "detail": f"quality_score {score} < {cut_of(lang, cfg, cuts):.6g} ({lang})"}


def decision_key(doc: dict) -> list[tuple[str, int, bool]]:
    """(language, histogram bin, kept) of a scored document, for the run's statistics."""
    score = (doc.get("signals") or {}).get("quality_score")
    if score is None:
        return []
    return [(doc.get("lang") or "", score_bin(score), doc.get("reason") is None)]


def score_key(doc: dict) -> list:
    """(language, histogram bin) of a scored document (the pre-pass of ``top_fraction``)."""
    return [k[:2] for k in decision_key(doc)]


def histograms(entries) -> dict[str, np.ndarray]:
    """Per-language histograms from ((lang, bin[, kept]), n) statistics entries."""
    out: dict[str, np.ndarray] = {}
    for key, n in entries:
        lang, b = key[0], int(key[1])
        out.setdefault(lang, np.zeros(BINS, dtype=np.int64))[b] += n
    return out


def top_fraction_cuts(cfg, entries) -> dict[str, int]:
    return {lang: top_fraction_cut(h, cfg.cut_value(lang)) for lang, h in sorted(histograms(entries).items())}


def manifest_entry(cfg, entries, cuts: dict[str, int]) -> dict:
    """The manifest's ``quality`` section: per language the documents scored, kept and dropped, the
    cut, and the score histogram (20 bins of the log-odds, each with the lowest score it holds)."""
    kept: dict[str, int] = {}
    for key, n in entries:
        if key[2]:
            kept[key[0]] = kept.get(key[0], 0) + n
    langs = {}
    for lang, h in sorted(histograms(entries).items()):
        scored = int(h.sum())
        langs[lang] = {"scored": scored, "kept": kept.get(lang, 0), "dropped": scored - kept.get(lang, 0),
                       "cut": float(f"{cut_of(lang, cfg, cuts):.6g}"), "histogram": histogram_summary(h)}
    return {
        "model": cfg.model or "shipped: pipelines/resources/quality/model.bin",
        "model_sha256": quality_model.file_sha256(cfg.model or str(SHIPPED_MODEL)),
        "keep": ("top_fraction" if cfg.top_fraction is not None else "threshold"),
        "languages": langs,
    }
