"""The cleaning chain: the filters of :mod:`~gristmill.pipelines.filters` applied in order, with their config.

``Cleaner.process(doc)`` is what the Beam stage calls per document; it is a plain object so that
benchmarks and tests run the exact same chain without a runner. Order follows FineWeb: cheap and
language-independent rules first, language ID, then the Gopher rules, then C4's line rules (which
rewrite the text), then FineWeb's quality rules, then your own filters (``clean.custom_filters``),
then PII redaction of what will be published.

Every rule runs in every language, with that language's settings (:meth:`Cleaner.rules_for`): the
section's values (FineWeb's, for English), the language table's (FineWeb-2's) and the section's
``per_language`` overrides, and with words as the language makes them (pipelines/words.py).
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import MappingProxyType

from gristmill.config import BUILTIN_CLEAN_STAGES, ConfigError, GopherQualityConfig, GristmillConfig
from gristmill.pipelines import filters, langid, language_table, quality, words

#: the built-in rules after language ID: (stage = config section, filter function), in the order the config
#: states once for every stage (gristmill.config.BUILTIN_CLEAN_STAGES)
_RULE_FUNCTIONS = {"gopher_repetition": filters.gopher_repetition, "gopher_quality": filters.gopher_quality,
                   "c4_lines": filters.c4_lines, "fineweb_quality": filters.fineweb_quality}
RULES = tuple((stage, _RULE_FUNCTIONS[stage]) for stage in BUILTIN_CLEAN_STAGES if stage in _RULE_FUNCTIONS)
_ENGLISH_STOP_WORDS = GopherQualityConfig.model_fields["stop_words"].default

#: funnel order of the stages a document can be dropped in (reason = "<stage>:<rule>"); custom
#: filters and decontamination come after the built-in cleaning stages (see :func:`stages`)
STAGES = ("read", "extract", *BUILTIN_CLEAN_STAGES, "exact_dedup", "near_dedup")


def stages(cfg: GristmillConfig) -> tuple[str, ...]:
    """The funnel order of a run: the built-in stages with the config's custom filters and (when
    on; a run without it keeps the funnel it always had) decontamination in place."""
    custom = tuple(f.name for f in cfg.clean.custom_filters)
    holdout = ("holdout",) if cfg.holdout.fraction else ()
    quality = ("quality",) if cfg.clean.quality.enabled else ()
    decontaminate = ("decontaminate",) if cfg.decontaminate.enabled else ()
    at, first = STAGES.index("exact_dedup"), STAGES.index("normalize")
    return STAGES[:first] + holdout + STAGES[first:at] + custom + quality + decontaminate + STAGES[at:]


#: funnel stages that are not steps of the cleaning chain (before it, or transforms after it)
_NOT_CLEAN_STEPS = ("read", "extract", "decontaminate", "exact_dedup", "near_dedup")


def step_order(cfg: GristmillConfig) -> tuple[str, ...]:
    """The steps of the cleaning chain in the order :class:`Cleaner` runs them (the order the
    manifest and report list them in): the funnel's cleaning stages, then PII redaction (a step
    that drops nothing)."""
    return (*(s for s in stages(cfg) if s not in _NOT_CLEAN_STEPS), "pii")


def rules_for(cfg: GristmillConfig, lang: str | None) -> list[tuple[str, object]]:
    """(stage, settings) of each built-in rule that applies to ``lang``, resolved for it."""
    c = cfg.clean
    table = language_table.load(c.language_table)
    out = []
    for stage, _ in RULES:
        section = getattr(c, stage)
        if not section.applies_to(lang):
            continue
        resolved = section.for_language(lang, table.get(stage))
        update: dict = {}
        if (stage == "gopher_quality" and lang != "en" and resolved.stop_words == _ENGLISH_STOP_WORDS
                and resolved.min_stop_words):
            update["min_stop_words"] = None  # English stop words would drop every page of another language
        if words.needs_segmenter(lang) and words.segmenter(lang) is None:
            # written without spaces and no segmenter here: a line would be one word, so no word rule
            update.update({
                "gopher_repetition": {"top_n_grams": (), "dup_n_grams": ()},
                "gopher_quality": {"enabled": False},
                "c4_lines": {"min_words_per_line": None, "max_word_length": None},
                "fineweb_quality": {"new_line_ratio": None},
            }[stage])
        if update:
            resolved = resolved.model_copy(update=update)
        if resolved.enabled:
            out.append((stage, resolved))
    return out


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
        self.functions = dict(RULES)
        self._rules: dict[str | None, list] = {}
        #: per step: [documents it ran on, documents it dropped, seconds] since :meth:`take_steps`
        self.steps: dict[str, list] = {}
        self._open: list | None = None  # the accumulator of the step running now
        self._since = 0.0

    def _enter(self, stage: str) -> None:
        """Step ``stage`` starts for the current document: the step before it ends (its time is
        ``time.perf_counter`` between the two; a few hundred nanoseconds per step)."""
        now = time.perf_counter()
        if self._open is not None:
            self._open[2] += now - self._since
        acc = self.steps.get(stage)
        if acc is None:
            acc = self.steps[stage] = [0, 0, 0.0]
        acc[0] += 1
        self.stage, self._open, self._since = stage, acc, now

    def _leave(self, dropped: bool) -> None:
        if self._open is not None:
            self._open[2] += time.perf_counter() - self._since
            if dropped:
                self._open[1] += 1
            self._open = None

    def take_steps(self) -> dict[str, list]:
        """The steps' [documents, dropped, seconds] since the last call (then zero again), in
        the order they first ran."""
        steps, self.steps = self.steps, {}
        return steps

    def rules(self, lang: str | None) -> list:
        """The built-in rules for ``lang`` with their settings (resolved once per language)."""
        found = self._rules.get(lang)
        if found is None:
            self.stage = "rules"
            found = self._rules[lang] = rules_for(self.cfg, lang)
        return found

    def process(self, doc: dict) -> dict:
        """Mark ``doc`` dropped (``doc['reason']``) or return it cleaned, with signals set. An
        exception inside a step drops this document as ``<stage>:error`` (the error in
        ``detail``), never the run."""
        if doc["reason"]:
            return doc
        self.stage = "holdout"
        try:
            doc = self._clean(doc)
        except Exception as e:  # noqa: BLE001 - one document never stops a run
            doc["reason"], doc["detail"] = f"{self.stage}:error", f"{type(e).__name__}: {e}"[:500]
        self._leave(bool(doc["reason"]))
        return doc

    def _clean(self, doc: dict) -> dict:
        c = self.cfg.clean
        signals = doc["signals"]

        if self.cfg.holdout.fraction:  # before any filter: the same documents whatever the recipe
            self._enter("holdout")
            why = filters.holdout(doc["id"], self.cfg.holdout)
            if why:
                doc["reason"] = f"holdout:{why}"
                return doc

        self._enter("normalize")
        v = filters.normalize_text(doc["text"], c.normalize)
        doc["text"] = v.text
        signals.update(v.signals)
        if v.reason:
            doc["reason"] = f"normalize:{v.reason}"
            return doc

        if c.url_blocklist.enabled and (self.block_domains or self.block_urls):
            self._enter("url_blocklist")
            why = filters.url_blocked(doc["url"], self.block_domains, self.block_urls)
            if why:
                doc["reason"] = f"url_blocklist:{why}"
                return doc

        self._enter("langid")
        lang, score = langid.predict(doc["text"], self.cfg.langid, self.model)
        doc["lang"], doc["lang_score"] = lang, round(score, 4)
        why = langid.decide(lang, score, self.cfg.langid)
        if why:
            doc["reason"] = f"langid:{why}"
            return doc
        if self.cfg.langid.fixed_threshold(lang) is None:  # threshold: auto, judged once the run's are known
            doc["lang_pending"] = True
            if doc["lang_score"] < langid.AUTO_CEILING:
                doc[langid.TEXT_AT_LANGID] = doc["text"]

        for stage, rule_cfg in self.rules(lang):
            self._enter(stage)
            text = doc["text"]
            if stage == "c4_lines":
                v = filters.c4_lines(text, rule_cfg, words.line_words(lang), words.sentence_counter(lang))
            else:
                v = self.functions[stage](text, rule_cfg, words.tokens_of(text, lang))
            signals.update(v.signals)
            if v.reason:
                doc["reason"] = f"{stage}:{v.reason}"
                return doc
            doc["text"] = v.text

        for f, fn, params in self.custom:
            if not f.applies_to(lang):
                continue
            self._enter(f.name)
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
            self._enter("quality")
            signals["quality_score"] = self.quality.score(doc["text"])

        if c.pii.enabled:
            self._enter("pii")
            v = filters.redact_pii(doc["text"], c.pii)
            doc["text"] = v.text
            signals.update(v.signals)
        return doc
