"""The cleaning chain: the filters of :mod:`~gristmill.pipelines.filters` applied in order, with their config.

``Cleaner.process(doc)`` is what the Beam stage calls per document; it is a plain object so that
benchmarks and tests run the exact same chain without a runner. Order follows FineWeb: cheap and
language-independent rules first, language ID, then the Gopher rules, then C4's line rules (which
rewrite the text), then your own filters (``clean.custom_filters``), then PII redaction of what
will be published.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import MappingProxyType

from gristmill.config import BUILTIN_CLEAN_STAGES, ConfigError, GristmillConfig
from gristmill.pipelines import filters, langid, quality

#: funnel order of the stages a document can be dropped in (reason = "<stage>:<rule>"); custom
#: filters and decontamination come after the built-in cleaning stages (see :func:`stages`)
STAGES = ("read", "extract", *BUILTIN_CLEAN_STAGES, "exact_dedup", "near_dedup")


def stages(cfg: GristmillConfig) -> tuple[str, ...]:
    """The funnel order of a run: the built-in stages with the config's custom filters and (when
    on; a run without it keeps the funnel it always had) decontamination in place."""
    custom = tuple(f.name for f in cfg.clean.custom_filters)
    quality = ("quality",) if cfg.clean.quality.enabled else ()
    decontaminate = ("decontaminate",) if cfg.decontaminate.enabled else ()
    at = STAGES.index("exact_dedup")
    return STAGES[:at] + custom + quality + decontaminate + STAGES[at:]


def import_function(path: str):
    """``package.module:function`` or ``package.module.function`` → the function."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"custom filter function {path!r} cannot be imported: {type(e).__name__}: {e}") from None
    if not callable(obj):
        raise ConfigError(f"custom filter function {path!r} is not callable")
    return obj


def load_blocklist(files, domains, urls) -> tuple[frozenset[str], frozenset[str]]:
    dom, url = set(d.lower().strip(".") for d in domains), set(urls)
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"URL blocklist file not found: {p} (clean.url_blocklist.files)")
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if "/" in line:
                url.add(line)
            else:
                dom.add(line.lower().strip("."))
    return frozenset(dom), frozenset(url)


class Cleaner:
    def __init__(self, cfg: GristmillConfig):
        self.cfg = cfg
        c = cfg.clean
        self.block_domains, self.block_urls = load_blocklist(
            c.url_blocklist.files, c.url_blocklist.domains, c.url_blocklist.urls
        )
        self.model = langid.load_model(cfg.langid.model_path)
        self.custom = [(f, import_function(f.function), MappingProxyType(dict(f.params)))
                       for f in c.custom_filters if f.enabled]
        self.quality = quality.QualityScorer(c.quality.model) if c.quality.enabled else None

    def process(self, doc: dict) -> dict:
        """Mark ``doc`` dropped (``doc['reason']``) or return it cleaned, with signals set. An
        exception inside a step drops this document as ``<stage>:error`` (the error in
        ``detail``), never the run."""
        if doc["reason"]:
            return doc
        self.stage = "normalize"
        try:
            return self._clean(doc)
        except Exception as e:  # noqa: BLE001 - one document never stops a run
            doc["reason"], doc["detail"] = f"{self.stage}:error", f"{type(e).__name__}: {e}"[:500]
            return doc

    def _clean(self, doc: dict) -> dict:
        c = self.cfg.clean
        signals = doc["signals"]

        v = filters.normalize_text(doc["text"], c.normalize)
        doc["text"] = v.text
        signals.update(v.signals)
        if v.reason:
            doc["reason"] = f"normalize:{v.reason}"
            return doc

        if c.url_blocklist.enabled and (self.block_domains or self.block_urls):
            self.stage = "url_blocklist"
            why = filters.url_blocked(doc["url"], self.block_domains, self.block_urls)
            if why:
                doc["reason"] = f"url_blocklist:{why}"
                return doc

        self.stage = "langid"
        lang, score = langid.predict(doc["text"], self.cfg.langid, self.model)
        doc["lang"], doc["lang_score"] = lang, round(score, 4)
        why = langid.decide(lang, score, self.cfg.langid)
        if why:
            doc["reason"] = f"langid:{why}"
            return doc

        for stage, rule_cfg, fn in (
            ("gopher_repetition", c.gopher_repetition, filters.gopher_repetition),
            ("gopher_quality", c.gopher_quality, filters.gopher_quality),
            ("c4_lines", c.c4_lines, filters.c4_lines),
        ):
            if not rule_cfg.applies_to(lang):
                continue
            self.stage = stage
            v = fn(doc["text"], rule_cfg)
            signals.update(v.signals)
            if v.reason:
                doc["reason"] = f"{stage}:{v.reason}"
                return doc
            doc["text"] = v.text

        for f, fn, params in self.custom:
            if not f.applies_to(lang):
                continue
            self.stage = f.name
            v = fn(doc["text"], params)
            if not isinstance(v, filters.Verdict):
                raise TypeError(f"custom filter {f.name} returned {type(v).__name__}, not a Verdict")
            if v.reason:
                doc["reason"] = f"{f.name}:{v.reason}"
                return doc
            doc["text"] = v.text

        if self.quality is not None and c.quality.applies_to(lang):
            # scored here (on every worker); whether it stays is decided per language once the scores
            # are known (pipelines/corpus.py: QualityCut), before decontamination and dedup
            self.stage = "quality"
            signals["quality_score"] = self.quality.score(doc["text"])

        if c.pii.enabled:
            self.stage = "pii"
            v = filters.redact_pii(doc["text"], c.pii)
            doc["text"] = v.text
            signals.update(v.signals)
        return doc
