"""Cleaning and quality filters as pure functions of (text, config).

Each filter returns a :class:`Verdict`: ``reason`` is None when the document is kept, ``text`` is the
(possibly rewritten) text, ``signals`` are the measured values (stored as columns in the shards). No
filter touches I/O or global state, so each is testable without a runner and cheap to reason about.

Words are tokens as spaCy's English tokenizer (the reference implementation's) makes them on web
text, approximated with regexes (see ``tokenize_words``).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

import numpy as np
import regex

from gristmill.config import (
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


@lru_cache(maxsize=4)
def _ftfy_config(unicode_form: str):
    import ftfy  # imported lazily: ~0.2 s, only needed for non-ASCII text

    # Typographic quotes and full-width characters are kept as written (they are text, not damage);
    # no explanations (they cost more than the fixing).
    return ftfy.TextFixerConfig(
        uncurl_quotes=False,
        fix_character_width=False,
        normalization=None if unicode_form == "none" else unicode_form,
        explain=False,
    )


def _ftfy_fix(text: str, unicode_form: str) -> str:
    import ftfy

    return ftfy.fix_text(text, _ftfy_config(unicode_form))


def normalize_text(text: str, cfg: NormalizeConfig) -> Verdict:
    """ftfy repair, Unicode normalisation, newline and control-character clean-up."""
    text = _NEWLINES_RE.sub("\n", text)
    n_controls = 0
    if _CONTROL_RE.search(text):
        text, n_controls = _CONTROL_RE.subn("", text)
    if cfg.fix_unicode and not text.isascii():
        # mojibake, HTML entities, C1 controls, surrogates, ligatures; then NFC
        text = _ftfy_fix(text, cfg.unicode_form)
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

# Tokens as spaCy's English tokenizer makes them (the reference implementation, datatrove, uses
# spacy.blank("en")), approximated with regexes: whitespace chunks; punctuation peeled off the start
# and end of a chunk one character at a time; the inside of a chunk kept whole (4.0, 1,000,
# 12/10/2019, x@y.com, URLs) except at spaCy's infixes (letter-letter hyphens, digit-digit hyphens,
# a/b, lower.Upper, a,b, ellipses) and English clitics (do n't, it 's). The `regex` module's \w
# includes combining marks, so Devanagari, Tamil, Myanmar ... words are not cut at vowel signs.
# Measured against datatrove on 50,000 web documents: bench/README.md.
_PRE = r"[^\w\s\-\\/@^~|+]"  # punctuation spaCy splits off the start of a chunk
_SUF = r"[^\w\s\-\\/@^~|+=$]"  # ... and off the end
_CLITIC = r"(?i:n['’]t|['’](?:s|m|d|ll|re|ve))(?!\w)"
_INFIX = (
    r"(?:(?<=[0-9])[+\-*^](?=[0-9-])|(?<=\p{Ll})\.(?=\p{Lu})|(?<=\p{L}),(?=\p{L})"
    r"|(?<=[\p{L}0-9])(?:-|–|—|~)(?=\p{L})|(?<=[\p{L}0-9])[:<>=/](?=\p{L})|\.\.+|…|" + _CLITIC + ")"
)
_URL = r"(?:https?://|www\.)\S+?(?=[.,;:!?)\]}>\"'»”’]*$)"
_CHUNK_RE = regex.compile(
    _URL
    + r"|\.{2,}|…"
    + rf"|(?<=^{_PRE}*){_PRE}"
    + "|"
    + _CLITIC
    + rf"|(?:(?:\p{{L}}\.){{2,}}|\p{{Lu}}\.)(?={_SUF}*$)"
    + rf"|(?:(?!{_INFIX})\S)+?(?={_SUF}*$|{_INFIX})"
    + r"|[^\w\s]"
)
_CLOSERS = frozenset(",;:!?)]}\"”’'»")
_WORD_CHAR_RE = regex.compile(r"\w")
_LETTER_RE = regex.compile(r"[^\W\d_]")
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_LINES_RE = re.compile(r"\n+")


@lru_cache(maxsize=4)  # the repetition and quality rules tokenize the same text one after the other
def tokenize_words(text: str) -> tuple[str, ...]:
    """All tokens of the text, symbols included, in order."""
    out: list[str] = []
    add, extend, chunk_tokens = out.append, out.extend, _CHUNK_RE.findall
    for chunk in text.split():
        if chunk.isalnum():  # most chunks: a plain word
            add(chunk)
            continue
        head, last = chunk[:-1], chunk[-1]
        if head.isalnum() and (last in _CLOSERS or (last == "." and not (len(chunk) == 2 and chunk[0].isupper()))):
            add(head)  # a word and one closing punctuation mark
            add(last)
        else:
            extend(chunk_tokens(chunk))
    return tuple(out)


def gopher_quality(text: str, cfg: GopherQualityConfig) -> Verdict:
    tokens = tokenize_words(text)
    words = [t for t in tokens if _WORD_CHAR_RE.search(t)]  # tokens that are not pure punctuation
    n_words, n_tokens = len(words), len(tokens)
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
    alpha_frac = sum(1 for t in words if _LETTER_RE.search(t)) / n_tokens  # tokens with a letter
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


class _Ngrams:
    """The tokens of a document as integer ids, with an id per n-gram: numpy does the counting,
    Python only walks the few documents that repeat themselves."""

    # odd 64-bit multipliers: an n-gram's key is sum(id_k * M_k) mod 2^64 over its n token ids, a
    # collision between different n-grams of one document is a ~2^-64 event
    _MUL = np.random.RandomState(20211208).randint(1, 2**62, size=16, dtype=np.int64).astype(np.uint64)
    _MUL = _MUL * np.uint64(2) + np.uint64(1)

    def __init__(self, tokens: list[str]):
        vocab: dict[str, int] = {}
        self.ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), dtype=np.uint64, count=len(tokens))
        self.cum = np.concatenate(([0], np.cumsum(np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)))))
        self._grams: dict[int, np.ndarray] = {}

    def grams(self, n: int) -> np.ndarray:
        """A small integer per n-gram position: equal n-grams, equal numbers."""
        if n not in self._grams:
            count = self.ids.size - n + 1
            key = np.zeros(max(count, 0), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for k in range(n):
                    key += self.ids[k : k + count] * self._MUL[k]
            self._grams[n] = np.unique(key, return_inverse=True)[1].reshape(-1)
        return self._grams[n]

    def chars(self, start, n: int):
        """Characters of the n tokens from ``start`` (spaces excluded)."""
        return self.cum[start + n] - self.cum[start]


def _top_ngram_chars(ng: _Ngrams, n: int, min_count: int = 1) -> int:
    """Characters covered by the most frequent n-gram (count × its length with single spaces).

    With ``min_count`` 1 (the reference behaviour) an n-gram seen once still counts, so a document
    of fewer than ~25 words is "repetitive"; 2 scores only n-grams that repeat.
    """
    grams = ng.grams(n)
    if grams.size == 0:
        return 0
    counts = np.bincount(grams)
    top = counts.max()
    if top < min_count:
        return 0
    first_top = int(np.flatnonzero(counts[grams] == top)[0])  # first-seen among ties, like the reference
    return int((ng.chars(first_top, n) + n - 1) * top)


def _duplicate_ngram_chars(ng: _Ngrams, n: int, limit: float = float("inf")) -> int:
    """Characters in n-grams that repeat an earlier n-gram, scanning left to right and jumping over
    a repeated n-gram (so overlapping repeats are not counted twice). Characters exclude spaces.
    Stops as soon as the count passes ``limit``."""
    grams = ng.grams(n)
    total = grams.size
    if total == 0:
        return 0
    first = np.full(int(grams.max()) + 1, total, dtype=np.int64)
    np.minimum.at(first, grams, np.arange(total))
    repeats = np.flatnonzero(first[grams] < np.arange(total))
    if repeats.size == 0:  # the common case: nothing repeats
        return 0
    start = int(repeats[0])  # before the first repeat every position is visited and new
    seen = set(grams[:start].tolist())
    gl = grams.tolist()
    cum = ng.cum.tolist()
    idx, repeated = start, 0
    while idx < total:
        g = gl[idx]
        if g in seen:
            repeated += cum[idx + n] - cum[idx]
            if repeated > limit:
                return repeated
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
    tokens = tokenize_words(text)
    ng = _Ngrams(tokens)
    for n, frac in cfg.top_n_grams:
        if len(tokens) >= n and _top_ngram_chars(ng, n, cfg.top_ngram_min_count) / n_chars > frac:
            return Verdict(text, f"top_{n}_gram", signals)
    for n, frac in cfg.dup_n_grams:
        if len(tokens) >= n and _duplicate_ngram_chars(ng, n, frac * n_chars) / n_chars > frac:
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

# The redaction patterns (public: what "no e-mail address left" means). Bounded quantifiers keep
# the regex linear on hostile input (50 MB of 'a@a@a@...').
EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}\b"
)
IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|\.\d)")
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
        text, n = EMAIL_RE.subn(cfg.email_replacement, text)
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
            text = IPV4_RE.sub(_sub, text)
        if "::" in text or text.count(":") >= 2:
            text = _IPV6_RE.sub(_sub, text)
        signals["pii_ips"] = count
    return Verdict(text, None, signals)
