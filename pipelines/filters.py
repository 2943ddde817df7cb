"""Cleaning and quality filters as pure functions of (text, config).

Each filter returns a :class:`Verdict`: ``reason`` is None when the document is kept, ``text`` is the
(possibly rewritten) text, ``signals`` are the measured values (stored as columns in the shards). No
filter touches I/O or global state, so each is testable without a runner and cheap to reason about.

Words are Unicode word runs (``\\w+``) plus runs of punctuation as separate tokens, which is what the
spaCy/NLTK tokenizers of the reference implementations produce on Latin-script text, at regex speed.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pipelines.config import (
    C4LinesConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    NormalizeConfig,
    PiiConfig,
)


@dataclass(frozen=True)
class Verdict:
    text: str
    reason: str | None = None
    signals: dict[str, float | int] = field(default_factory=dict)

    @property
    def keep(self) -> bool:
        return self.reason is None


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

# C0/C1 control characters except \t and \n; NUL bytes arrive from broken encoders and binary junk.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NEWLINES_RE = re.compile(r"\r\n?|[\u2028\u2029\x85]")


def normalize_text(text: str, cfg: NormalizeConfig) -> Verdict:
    """ftfy repair, Unicode normalisation, newline and control-character clean-up."""
    text = _NEWLINES_RE.sub("\n", text)
    n_controls = 0
    if _CONTROL_RE.search(text):
        text, n_controls = _CONTROL_RE.subn("", text)
    if cfg.fix_unicode and not text.isascii():
        import ftfy  # imported lazily: ~0.2 s, only needed for non-ASCII text

        # ftfy also unescapes HTML entities and normalises to NFC unless told otherwise
        text = ftfy.fix_text(text, normalization=None if cfg.unicode_form == "none" else cfg.unicode_form)
    elif cfg.unicode_form != "none" and not text.isascii():
        text = unicodedata.normalize(cfg.unicode_form, text)
    text = text.strip()
    if not text:
        return Verdict(text, "empty")
    return Verdict(text, None, {"control_chars_removed": n_controls} if n_controls else {})


def dedup_key(text: str) -> str:
    """The normalised form two documents must share to be exact duplicates.

    NFKC + casefold + whitespace collapsed: differences in case, spacing or Unicode compatibility
    forms do not make a new document.
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# ---------------------------------------------------------------------------------------------
# URL blocklist
# ---------------------------------------------------------------------------------------------


def url_host(url: str | None) -> str:
    if not url:
        return ""
    url = url.strip().strip("<>")
    if "://" not in url:  # Dolma and others store URLs without a scheme
        url = "http://" + url
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


def url_blocked(url: str | None, domains: frozenset[str], urls: frozenset[str]) -> str | None:
    """Reason string if the URL or one of its parent domains is blocklisted, else None."""
    if not url:
        return None
    if url.strip().strip("<>") in urls:
        return "url"
    host = url_host(url)
    while host:
        if host in domains:
            return "domain"
        _, _, host = host.partition(".")
    return None


# ---------------------------------------------------------------------------------------------
# Gopher (MassiveText) rules
# ---------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+")
_SYMBOL_TOKEN_RE = re.compile(r"[^\w\s]+")
_NUMERIC_WORD_RE = re.compile(r"(?<!\w)[\d_]+(?!\w)")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]+")
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_LINES_RE = re.compile(r"\n+")


def tokenize_words(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def gopher_quality(text: str, cfg: GopherQualityConfig) -> Verdict:
    words = _WORD_RE.findall(text)  # tokens that are not pure punctuation
    n_symbol_tokens = len(_SYMBOL_TOKEN_RE.findall(text))
    n_words = len(words)
    n_tokens = n_words + n_symbol_tokens
    signals: dict[str, float | int] = {"n_words": n_words}
    if cfg.min_doc_words and n_words < cfg.min_doc_words:
        return Verdict(text, "short_doc", signals)
    if cfg.max_doc_words and n_words > cfg.max_doc_words:
        return Verdict(text, "long_doc", signals)
    mean_len = sum(map(len, words)) / n_words if n_words else 0.0
    signals["mean_word_length"] = round(mean_len, 4)
    if cfg.min_avg_word_length and mean_len < cfg.min_avg_word_length:
        return Verdict(text, "mean_word_length_low", signals)
    if cfg.max_avg_word_length and mean_len > cfg.max_avg_word_length:
        return Verdict(text, "mean_word_length_high", signals)
    if n_tokens == 0:
        return Verdict(text, "no_words", signals)
    if cfg.max_symbol_word_ratio:
        if text.count("#") / n_tokens > cfg.max_symbol_word_ratio:
            return Verdict(text, "too_many_hashes", signals)
        if (text.count("...") + text.count("…")) / n_tokens > cfg.max_symbol_word_ratio:
            return Verdict(text, "too_many_ellipsis", signals)
    lines = text.splitlines() or [text]
    if cfg.max_bullet_lines_ratio:
        bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
        if bullets / len(lines) > cfg.max_bullet_lines_ratio:
            return Verdict(text, "too_many_bullets", signals)
    if cfg.max_ellipsis_lines_ratio:
        ends = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
        if ends / len(lines) > cfg.max_ellipsis_lines_ratio:
            return Verdict(text, "too_many_end_ellipsis", signals)
    alpha_frac = (n_words - len(_NUMERIC_WORD_RE.findall(text))) / n_tokens
    signals["alpha_words_frac"] = round(alpha_frac, 4)
    if cfg.min_alpha_words_ratio and alpha_frac < cfg.min_alpha_words_ratio:
        return Verdict(text, "alpha_words_low", signals)
    if cfg.min_stop_words:
        # case-sensitive, as in the reference implementations
        found = set(cfg.stop_words).intersection(words)
        signals["stop_words"] = len(found)
        if len(found) < cfg.min_stop_words:
            return Verdict(text, "too_few_stop_words", signals)
    return Verdict(text, None, signals)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in repeated items), first occurrences not counted."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for x in items:
        if x in seen:
            dup_items += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return dup_items, dup_chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram (count × its length with single spaces).

    An n-gram seen once is not repetition: unlike datatrove, which scores the first n-gram of a
    document without repeats, and so drops every short document (under ~25 words) as
    "repetitive", we return 0 then. See bench/README.md.
    """
    grams = Counter(zip(*(words[i:] for i in range(n))))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]  # first-seen among ties, like the reference
    if count < 2:
        return 0
    return (sum(map(len, gram)) + n - 1) * count


def _duplicate_ngram_chars(words: list[str], word_lens_cum: list[int], n: int) -> int:
    """Characters in n-grams that repeat an earlier n-gram, scanning left to right and jumping over
    a repeated n-gram (so overlapping repeats are not counted twice). Characters exclude spaces."""
    grams = list(zip(*(words[i:] for i in range(n))))
    if len(set(grams)) == len(grams):  # the common case: nothing repeats
        return 0
    seen: set[tuple[str, ...]] = set()
    idx, repeated, total = 0, 0, len(grams)
    while idx < total:
        g = grams[idx]
        if g in seen:
            repeated += word_lens_cum[idx + n] - word_lens_cum[idx]
            idx += n
        else:
            seen.add(g)
            idx += 1
    return repeated


def gopher_repetition(text: str, cfg: GopherRepetitionConfig) -> Verdict:
    n_chars = len(text)
    if n_chars == 0:
        return Verdict(text, "empty")
    paragraphs = _PARAGRAPH_RE.split(text.strip())
    dup_paras, dup_para_chars = _duplicates(paragraphs)
    signals: dict[str, float | int] = {"dup_para_frac": round(dup_paras / len(paragraphs), 4)}
    if cfg.dup_para_frac is not None and dup_paras / len(paragraphs) > cfg.dup_para_frac:
        return Verdict(text, "dup_para_frac", signals)
    if cfg.dup_para_char_frac is not None and dup_para_chars / n_chars > cfg.dup_para_char_frac:
        return Verdict(text, "dup_para_char_frac", signals)
    lines = _LINES_RE.split(text)
    dup_lines, dup_line_chars = _duplicates(lines)
    signals["dup_line_frac"] = round(dup_lines / len(lines), 4)
    if cfg.dup_line_frac is not None and dup_lines / len(lines) > cfg.dup_line_frac:
        return Verdict(text, "dup_line_frac", signals)
    if cfg.dup_line_char_frac is not None and dup_line_chars / n_chars > cfg.dup_line_char_frac:
        return Verdict(text, "dup_line_char_frac", signals)
    words = _TOKEN_RE.findall(text)
    for n, frac in cfg.top_n_grams:
        if len(words) >= n and _top_ngram_chars(words, n) / n_chars > frac:
            return Verdict(text, f"top_{n}_gram", signals)
    if cfg.dup_n_grams:
        cum = [0]
        for w in words:
            cum.append(cum[-1] + len(w))
        for n, frac in cfg.dup_n_grams:
            if len(words) >= n and _duplicate_ngram_chars(words, cum, n) / n_chars > frac:
                return Verdict(text, f"dup_{n}_gram", signals)
    return Verdict(text, None, signals)


# ---------------------------------------------------------------------------------------------
# C4 line and page rules
# ---------------------------------------------------------------------------------------------

_TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "…")
_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_POLICY_SUBSTRINGS = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
)
_SENTENCE_END_RE = re.compile(r"[.!?。！？…]+(?=[\"'”’)\]]*(?:\s|$))")


def c4_lines(text: str, cfg: C4LinesConfig) -> Verdict:
    """Drop lines a web page is mostly made of that are not prose, then judge what remains."""
    lowered = text.lower()
    if cfg.drop_lorem_ipsum and "lorem ipsum" in lowered:
        return Verdict(text, "lorem_ipsum")
    if cfg.drop_curly_bracket and "{" in text:
        return Verdict(text, "curly_bracket")
    kept: list[str] = []
    lines = text.split("\n")
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if cfg.remove_citations:
            line = _CITATION_RE.sub("", line)
        if cfg.require_terminal_punctuation and not line.endswith(_TERMINAL_PUNCT):
            continue
        words = line.split()
        if cfg.min_words_per_line and len(words) < cfg.min_words_per_line:
            continue
        if cfg.max_word_length and any(len(w) > cfg.max_word_length for w in words):
            continue
        low = line.lower()
        if cfg.drop_javascript_lines and "javascript" in low:
            continue
        if cfg.drop_policy_lines and any(p in low for p in _POLICY_SUBSTRINGS):
            continue
        kept.append(line)
    non_empty = sum(1 for ln in lines if ln.strip())
    signals = {"c4_lines_removed_frac": round(1 - len(kept) / non_empty, 4) if non_empty else 0.0}
    new_text = "\n".join(kept)
    if not kept:
        return Verdict(new_text, "no_lines_left", signals)
    if cfg.min_sentences and len(_SENTENCE_END_RE.findall(new_text)) < cfg.min_sentences:
        return Verdict(new_text, "too_few_sentences", signals)
    return Verdict(new_text, None, signals)


# ---------------------------------------------------------------------------------------------
# PII redaction
# ---------------------------------------------------------------------------------------------

# Bounded quantifiers keep the regex linear on hostile input (50 MB of 'a@a@a@...').
_EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}\b"
)
_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|\.\d)")
# loose on purpose (matches "::1", "12:30:45"); ipaddress decides what is an address
_IPV6_RE = re.compile(r"(?<![:\w])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![:\w])")


def _public_ip(match: re.Match) -> bool:
    try:
        return ipaddress.ip_address(match.group(0)).is_global
    except ValueError:
        return False


def redact_pii(text: str, cfg: PiiConfig) -> Verdict:
    """Replace e-mail addresses and public (globally routable) IP addresses; private, loopback and
    documentation addresses are not personal data and are left alone."""
    signals: dict[str, float | int] = {}
    if cfg.emails and "@" in text:
        text, n = _EMAIL_RE.subn(cfg.email_replacement, text)
        signals["pii_emails"] = n
    if cfg.ip_addresses:
        count = 0

        def _sub(m: re.Match) -> str:
            nonlocal count
            if _public_ip(m):
                count += 1
                return cfg.ip_replacement
            return m.group(0)

        if "." in text:
            text = _IPV4_RE.sub(_sub, text)
        if "::" in text or text.count(":") >= 2:
            text = _IPV6_RE.sub(_sub, text)
        signals["pii_ips"] = count
    return Verdict(text, None, signals)
