"""Cleaning and quality filters as pure functions of (text, config).

Each filter returns a :class:`Verdict`: ``reason`` is None when the document is kept, ``text`` is the
(possibly rewritten) text, ``signals`` are the measured values (stored as columns in the shards). No
filter touches I/O or global state, so each is testable without a runner and cheap to reason about.

Words are tokens as spaCy's English tokenizer (the reference implementation's) makes them on web
text, approximated with regexes (see ``tokenize_words``).
"""

from __future__ import annotations

import hashlib
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
    FineWebQualityConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    HoldoutConfig,
    NormalizeConfig,
    PiiConfig,
)
from gristmill.pipelines import words


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
    """``ftfy.fix_text(text, _ftfy_config(unicode_form))``, the same string, computed faster."""
    gate = _ftfy_gate(unicode_form)
    if gate is None:  # an ftfy this module has not been checked against
        import ftfy

        return ftfy.fix_text(text, _ftfy_config(unicode_form))
    return gate.fix_text(text)


# ftfy, fast and exact. ``ftfy.fix_text`` cuts the text into segments (each line with its "\n", a
# line longer than ``max_decode_length`` in pieces of that length) and runs ``fix_and_explain`` on
# each: the fixers below, then the Unicode normalisation, repeated until nothing changes. With
# ``unescape_html="auto"``, HTML entities are unescaped only in the segments before the first one
# that contains a "<". A segment on which every fixer is the identity comes out as its normalised
# form (the second round changes nothing: normalisation is idempotent, and the fixers are checked on
# the normalised form too). Each fixer is the identity on a string without the characters it acts
# on, read from ftfy's own tables and regexes:
#
# * unescape_html: HTML_ENTITY_RE.sub - the identity where HTML_ENTITY_RE does not match;
# * fix_encoding: returns the text as it is unless ``badness.is_bad(text)`` (its first test), that
#   is BADNESS_RE.search. _mojibake_gate derives from BADNESS_RE a looser pattern that matches
#   wherever it does; most text has no match of it, and where it has one, is_bad decides;
# * fix_c1_controls (C1_CONTROL_RE), fix_latin_ligatures (LIGATURES), fix_character_width
#   (WIDTH_MAP), uncurl_quotes (SINGLE_QUOTE_RE, DOUBLE_QUOTE_RE), fix_surrogates (SURROGATE_RE),
#   remove_terminal_escapes (ANSI_RE: every match starts with ESC), remove_control_chars
#   (CONTROL_CHARS), fix_line_breaks (the four characters it replaces): the characters they act on.
#
# A text shorter than max_decode_length that passes all checks as a whole comes out as its
# normalised form: every segment passes (the checks look for characters, or for matches that would
# be matches in the whole text too), and normalising segments that end in "\n" one by one equals
# normalising their concatenation ("\n" is a starter that composes with nothing, so neither
# canonical reordering nor composition crosses it). Otherwise the text is fixed segment by segment
# as fix_text does it, and a segment that fails a check (about 1 in 100 on web text) goes to
# ``ftfy.fix_and_explain`` with the configuration fix_text would pass. This reasoning holds for the
# ftfy versions checked (tests/test_ftfy_gate.py compares with ftfy.fix_text on real and broken
# text); any other ftfy is called as it is.
_FTFY_CHECKED_VERSIONS = ("6.3.",)
_FTFY_FIXERS = frozenset({
    "unescape_html", "remove_terminal_escapes", "restore_byte_a0", "replace_lossy_sequences",
    "decode_inconsistent_utf8", "fix_c1_controls", "fix_latin_ligatures", "fix_character_width",
    "uncurl_quotes", "fix_line_breaks", "fix_surrogates", "remove_control_chars",
})
_FTFY_OPTIONS = frozenset(_FTFY_FIXERS | {"fix_encoding", "normalization", "max_decode_length", "explain"})
_LINE_BREAKS = "\r\u2028\u2029\x85"  # what ftfy.fixes.fix_line_breaks replaces by "\n"


def _regex_items(pattern: re.Pattern) -> list | None:
    from re import _parser  # the re module's own parser (Python >= 3.11)

    if pattern.flags & (re.IGNORECASE | re.LOCALE):
        return None
    return list(_parser.parse(pattern.pattern, pattern.flags).data)


def _item_chars(item) -> frozenset[int] | None:
    """Code points a one-character item of a parsed regex (a literal or a class) matches; None for
    any other item or a class with categories or negation."""
    from re import _constants as sre

    op, av = item
    if op is sre.LITERAL:
        return frozenset((av,))
    if op is not sre.IN:
        return None
    chars: set[int] = set()
    for member, value in av:
        if member is sre.LITERAL:
            chars.add(value)
        elif member is sre.RANGE:
            chars.update(range(value[0], value[1] + 1))
        else:
            return None
    return frozenset(chars)


def _first_chars(pattern: re.Pattern) -> frozenset[int] | None:
    """Code points every match of ``pattern`` starts with, if its first item is a plain class."""
    items = _regex_items(pattern)
    return _item_chars(items[0]) if items else None


def _char_src(c: int) -> str:
    return f"\\U{c:08x}"


def _class_src(chars) -> str:
    """A character class of the code points, as ranges."""
    cs = sorted(chars)
    parts, i = [], 0
    while i < len(cs):
        j = i
        while j + 1 < len(cs) and cs[j + 1] == cs[j] + 1:
            j += 1
        parts.append(_char_src(cs[i]) if i == j else f"{_char_src(cs[i])}-{_char_src(cs[j])}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def _unparse(items) -> str | None:
    """Regex source of parsed items, for the kinds of item ftfy's BADNESS_RE is made of; None for
    anything else (anchors and lookarounds included)."""
    from re import _constants as sre

    categories = {
        sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D", sre.CATEGORY_SPACE: r"\s",
        sre.CATEGORY_NOT_SPACE: r"\S", sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W",
    }
    out = []
    for op, av in items:
        if op is sre.LITERAL:
            out.append(_char_src(av))
        elif op is sre.NOT_LITERAL:
            out.append(f"[^{_char_src(av)}]")
        elif op is sre.ANY:
            out.append(".")
        elif op is sre.IN:
            parts = []
            for member, value in av:
                if member is sre.NEGATE:
                    parts.append("^")
                elif member is sre.LITERAL:
                    parts.append(_char_src(value))
                elif member is sre.RANGE:
                    parts.append(f"{_char_src(value[0])}-{_char_src(value[1])}")
                elif member is sre.CATEGORY and value in categories:
                    parts.append(categories[value])
                else:
                    return None
            out.append("[" + "".join(parts) + "]")
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            lo, hi, sub = av
            inner = _unparse(sub.data)
            if inner is None:
                return None
            bounds = f"{{{lo},{'' if hi is sre.MAXREPEAT else hi}}}"
            out.append(f"(?:{inner}){bounds}" + ("?" if op is sre.MIN_REPEAT else ""))
        elif op is sre.SUBPATTERN and not av[1] and not av[2]:
            inner = _unparse(av[3].data)
            if inner is None:
                return None
            out.append(f"(?:{inner})")
        elif op is sre.BRANCH:
            alts = [_unparse(b.data) for b in av[1]]
            if any(a is None for a in alts):
                return None
            out.append("(?:" + "|".join(alts) + ")")
        else:
            return None
    return "".join(out)


def _tree_key(node):
    """A parsed regex as nested tuples (the parser's objects do not compare by value)."""
    if hasattr(node, "data"):
        node = node.data
    if isinstance(node, (list, tuple)):
        return tuple(_tree_key(x) for x in node)
    return node


def _rarity(chars: frozenset[int]) -> int:
    """A guess at how often text has one of these characters: letters are common (lowercase the
    most), symbols rare. Only speed depends on it."""
    weights = {"Ll": 100, "Lo": 100, "Lm": 100, "Lu": 20, "Lt": 20, "Pi": 10, "Pf": 10, "Pd": 10, "Po": 10, "Zs": 10}
    return sum(weights.get(unicodedata.category(chr(c)), 1) for c in chars)


def _mojibake_gate(badness_re: re.Pattern) -> re.Pattern | None:
    """A pattern that matches in every string in which ``badness_re`` matches, and in few others; a
    match of it in a string is one in any longer string that contains it. None if ``badness_re`` is
    not of the shape this relies on.

    Of each alternative of ``badness_re`` it keeps an item that matches non-ASCII characters only
    (every match of the alternative has such a character), the one-character items just before it
    (as a lookbehind) and the items after it without zero-width assertions; what comes before is
    dropped. It starts with one character class, which the regex engine scans for at C speed."""
    from re import _constants as sre
    from re import _parser

    one_char = (sre.LITERAL, sre.NOT_LITERAL, sre.IN, sre.ANY)
    items = _regex_items(badness_re)
    if not items:
        return None
    alternatives = [b.data for b in items[0][1][1]] if len(items) == 1 and items[0][0] is sre.BRANCH else [items]
    flags = badness_re.flags & ~re.VERBOSE
    first: set[int] = set()
    branches = []
    for alt in alternatives:
        found = [(i, cs) for i, it in enumerate(alt) if (cs := _item_chars(it)) and min(cs) >= 0x80]
        if not found:
            return None
        k, chars = min(found, key=lambda x: (_rarity(x[1]), -x[0]))
        j = k
        while j > 0 and alt[j - 1][0] in one_char:
            j -= 1
        before = list(alt[j : k + 1])
        after = [it for it in alt[k + 1 :] if it[0] not in (sre.AT, sre.ASSERT, sre.ASSERT_NOT)]
        src_before, src_after = _unparse(before), _unparse(after)
        for src, part in ((src_before, before), (src_after, after)):
            if src is None or _tree_key(_parser.parse(src, flags)) != _tree_key(part):
                return None
        first |= chars
        branches.append(f"(?<={src_before}){src_after}")
    return re.compile(_class_src(first) + "(?:" + "|".join(branches) + ")", flags)


class _FtfyGate:
    """fix_text for one configuration, with the checks above."""

    def __init__(self, config):
        import ftfy
        from ftfy import badness, chardata, fixes

        self.config = config
        self.form = config.normalization
        self.html_re = chardata.HTML_ENTITY_RE
        self.is_bad = badness.is_bad
        self.fix_and_explain = ftfy.fix_and_explain
        acts: set[int] = set()
        for enabled, chars in (
            (config.fix_c1_controls, _first_chars(chardata.C1_CONTROL_RE)),
            (config.fix_latin_ligatures, frozenset(chardata.LIGATURES)),
            (config.fix_character_width, frozenset(chardata.WIDTH_MAP)),
            (config.uncurl_quotes, _first_chars(chardata.SINGLE_QUOTE_RE)),
            (config.uncurl_quotes, _first_chars(chardata.DOUBLE_QUOTE_RE)),
            (config.fix_line_breaks, frozenset(map(ord, _LINE_BREAKS))),
            (config.fix_surrogates, _first_chars(fixes.SURROGATE_RE)),
            (config.remove_terminal_escapes, _first_chars(fixes.ANSI_RE)),
            (config.remove_control_chars, frozenset(chardata.CONTROL_CHARS)),
        ):
            if enabled:
                if chars is None:
                    raise ValueError("unexpected ftfy table")
                acts |= chars
        self.act_re = re.compile(_class_src(acts)) if acts else None
        self.mojibake_re = None
        if config.fix_encoding:
            self.mojibake_re = _mojibake_gate(badness.BADNESS_RE)
            if self.mojibake_re is None:
                raise ValueError("unexpected ftfy BADNESS_RE")

    def _untouched(self, text: str, html: bool, segment: bool) -> bool:
        """Every fixer is the identity on ``text`` (a segment, or with ``segment`` False a whole
        text, checked without is_bad, which is not per segment)."""
        if self.act_re is not None and self.act_re.search(text):
            return False
        if html and "&" in text and self.html_re.search(text):
            return False
        if self.mojibake_re is not None and self.mojibake_re.search(text):
            return segment and not self.is_bad(text)
        return True

    def _segment(self, seg: str, config, html: bool) -> str:
        if self._untouched(seg, html, True):
            if self.form is None:
                return seg
            fixed = unicodedata.normalize(self.form, seg)
            if fixed == seg or self._untouched(fixed, html, True):
                return fixed
        return self.fix_and_explain(seg, config).text

    def fix_text(self, text: str) -> str:
        config = self.config
        html = bool(config.unescape_html)
        if len(text) <= config.max_decode_length and self._untouched(text, html, False):
            if self.form is None:
                return text
            fixed = unicodedata.normalize(self.form, text)
            if fixed == text or self._untouched(fixed, html, False):
                return fixed
        # ftfy.fix_text's loop
        out = []
        pos, end = 0, len(text)
        while pos < end:
            brk = text.find("\n", pos) + 1
            if brk == 0:
                brk = end
            if brk - pos > config.max_decode_length:
                brk = pos + config.max_decode_length
            seg = text[pos:brk]
            if config.unescape_html == "auto" and "<" in seg:
                config = config._replace(unescape_html=False)
                html = False
            out.append(self._segment(seg, config, html))
            pos = brk
        return "".join(out)


@lru_cache(maxsize=4)
def _ftfy_gate(unicode_form: str) -> _FtfyGate | None:
    import ftfy

    config = _ftfy_config(unicode_form)
    if (
        not ftfy.__version__.startswith(_FTFY_CHECKED_VERSIONS)
        or frozenset(ftfy.FIXERS) != _FTFY_FIXERS
        or frozenset(config._fields) != _FTFY_OPTIONS
    ):
        return None
    try:
        return _FtfyGate(config)
    except (ImportError, ValueError, AttributeError):  # tables or regexes not of the shape checked
        return None


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


def holdout_draw(doc_id: str, salt: str) -> float:
    """A document's place in [0, 1), from a hash of its id alone: held out or not whatever its text becomes."""
    digest = hashlib.blake2b(f"{salt}\x00{doc_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def holdout(doc_id: str, cfg: HoldoutConfig) -> str | None:
    """The reason a document leaves this run's side of the held-out split (``holdout:<reason>``), or None."""
    held_out = holdout_draw(doc_id, cfg.salt) < cfg.fraction
    if cfg.keep == "rest":
        return "held_out" if held_out else None
    return None if held_out else "not_held_out"


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
# spaCy's other languages (de, sv, fr, ...) keep letter-hyphen-letter words whole ("E-post", "Saudi-Arabien")
_INFIX_KEEP_HYPHENS = _INFIX.replace("(?:-|–|—|~)(?=\\p{L})", "(?:–|—|~)(?=\\p{L})").replace("[+\\-*^]", "[+*^]")
_URL = r"(?:https?://|www\.)\S+?(?=[.,;:!?)\]}>\"'»”’]*$)"
def _chunk_re(infix: str) -> regex.Pattern:
    return regex.compile(
        _URL
        + r"|\.{2,}|…"
        + rf"|(?<=^{_PRE}*){_PRE}"
        + "|"
        + _CLITIC
        + rf"|(?:(?:\p{{L}}\.){{2,}}|\p{{Lu}}\.)(?={_SUF}*$)"
        + rf"|(?:(?!{infix})\S)+?(?={_SUF}*$|{infix})"
        + r"|[^\w\s]"
    )


_CHUNK_RE = _chunk_re(_INFIX)
_CHUNK_RE_KEEP_HYPHENS = _chunk_re(_INFIX_KEEP_HYPHENS)
_CLOSERS = frozenset(",;:!?)]}\"”’'»")
_WORD_CHAR_RE = regex.compile(r"\w")
_LETTER_RE = regex.compile(r"[^\W\d_]")
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_LINES_RE = re.compile(r"\n+")


@lru_cache(maxsize=4)  # the repetition and quality rules tokenize the same text one after the other
def tokenize_words(text: str, split_hyphens: bool = True) -> tuple[str, ...]:
    """All tokens of the text, symbols included, in order. ``split_hyphens``: English's rule ("e-mail" is
    three tokens); spaCy's tokenizers of other languages keep such words whole."""
    out: list[str] = []
    add, extend = out.append, out.extend
    chunk_tokens = (_CHUNK_RE if split_hyphens else _CHUNK_RE_KEEP_HYPHENS).findall
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


def gopher_quality(text: str, cfg: GopherQualityConfig, tokens: tuple[str, ...] | None = None) -> Verdict:
    """``tokens``: the text's tokens when they are not English-like words (pipelines/words.py)."""
    if tokens is None:
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
    firsts = dict.fromkeys(items)  # each item once, in order
    return len(items) - len(firsts), sum(map(len, items)) - sum(map(len, firsts))


class _Ngrams:
    """The tokens of a document as integer ids, with an id per n-gram: numpy does the counting,
    Python only walks the few documents that repeat themselves.

    Ids are exact (no hashing): a token's id is the position where it first occurs, an n-gram's is the
    rank of the pair (id of its first n-1 tokens, id of its last token). If no n-gram occurs twice, no
    longer one does (two equal (n+1)-grams begin with two equal n-grams): from the first such n on,
    an n-gram's id is its position and nothing is sorted."""

    def __init__(self, tokens: list[str]):
        n_tokens = len(tokens)
        vocab: dict[str, int] = {}  # setdefault keeps the first position
        self.ids = np.fromiter(map(vocab.setdefault, tokens, range(n_tokens)), dtype=np.int64, count=n_tokens)
        self.cum = np.concatenate(([0], np.cumsum(np.fromiter(map(len, tokens), dtype=np.int64, count=n_tokens))))
        self._grams: dict[int, np.ndarray] = {1: self.ids}
        #: positions (ascending) whose n-gram occurred before
        self._repeats: dict[int, np.ndarray] = {}
        #: the smallest n of which no n-gram occurs twice, once seen (0: not yet)
        self._distinct_from = 1 if len(vocab) == n_tokens else 0

    def distinct(self, n: int) -> bool:
        """No n-gram occurs twice."""
        if not 0 < self._distinct_from <= n:
            self.grams(n)
        return 0 < self._distinct_from <= n

    def grams(self, n: int) -> np.ndarray:
        """A small integer per n-gram position: equal n-grams, equal numbers."""
        g = self._grams.get(n)
        if g is not None:
            return g
        count = max(self.ids.size - n + 1, 0)
        if n < 1:  # not an n-gram size; as before: one number for all
            g, repeats = np.zeros(count, dtype=np.int64), np.arange(1, count)
        elif 0 < self._distinct_from <= n:
            g, repeats = np.arange(count, dtype=np.int64), np.arange(0)
        else:
            key = self.grams(n - 1)[:count] * self.ids.size + self.ids[n - 1 :]
            order = np.argsort(key, kind="stable")  # equal keys in position order
            ranked = key[order]
            new = np.empty(count, dtype=bool)
            new[:1] = True
            np.not_equal(ranked[1:], ranked[:-1], out=new[1:])
            g = np.empty(count, dtype=np.int64)
            g[order] = np.cumsum(new) - 1
            repeats = np.sort(order[~new])  # all but the first of each run of equal keys
            if repeats.size == 0 and not self._distinct_from:
                self._distinct_from = n
        self._grams[n], self._repeats[n] = g, repeats
        return g

    def repeats(self, n: int) -> np.ndarray:
        """Positions (ascending) of the n-grams that occurred before."""
        if n not in self._repeats:
            if n == 1:
                self._repeats[1] = np.flatnonzero(self.ids != np.arange(self.ids.size))
            else:
                self.grams(n)
        return self._repeats[n]

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
    if ng.distinct(n):  # every n-gram once: the first is the first-seen of the most frequent
        top, first_top = 1, 0
    else:
        counts = np.bincount(grams)
        top = counts.max()
        first_top = int(np.flatnonzero(counts[grams] == top)[0])  # first-seen among ties, like the reference
    if top < min_count:
        return 0
    return int((ng.chars(first_top, n) + n - 1) * top)


def _duplicate_ngram_chars(ng: _Ngrams, n: int, limit: float = float("inf")) -> int:
    """Characters in n-grams that repeat an earlier n-gram, scanning left to right and jumping over
    a repeated n-gram (so overlapping repeats are not counted twice). Characters exclude spaces.
    Stops as soon as the count passes ``limit``."""
    if ng.distinct(n):  # the common case: nothing repeats (then nothing longer does either)
        return 0
    repeats = ng.repeats(n).tolist()
    gl = ng.grams(n).tolist()
    cum = ng.cum.tolist()
    total, n_repeats = len(gl), len(repeats)
    # The reference walk: at a new n-gram, remember it and step one; at a remembered one, count its
    # characters and jump n ahead. An n-gram that occurs nowhere before is always new: the walk takes
    # the runs of those in one step and looks only at the positions in `repeats`.
    idx = j = repeated = 0
    seen: set[int] = set()
    while idx < total:
        while j < n_repeats and repeats[j] < idx:
            j += 1
        nxt = repeats[j] if j < n_repeats else total
        if nxt > idx:
            seen.update(gl[idx:nxt])
            idx = nxt
            if idx >= total:
                break
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


def gopher_repetition(text: str, cfg: GopherRepetitionConfig, tokens: tuple[str, ...] | None = None) -> Verdict:
    """``tokens``: the text's tokens when they are not English-like words (pipelines/words.py)."""
    n_chars = len(text)
    if n_chars == 0:
        return Verdict(text, "empty")
    stripped = text.strip()
    # the regex splits only where a blank line is; most web text has none (str.split is much faster)
    paragraphs = _PARAGRAPH_RE.split(stripped) if "\n\n" in stripped else [stripped]
    dup_paras, dup_para_chars = _duplicates(paragraphs)
    signals: dict[str, float | int] = {"dup_para_frac": round(dup_paras / len(paragraphs), 4)}
    if cfg.dup_para_frac is not None and dup_paras / len(paragraphs) > cfg.dup_para_frac:
        return Verdict(text, "dup_para_frac", signals)
    if cfg.dup_para_char_frac is not None and dup_para_chars / n_chars > cfg.dup_para_char_frac:
        return Verdict(text, "dup_para_char_frac", signals)
    lines = _LINES_RE.split(text) if "\n\n" in text else text.split("\n")
    dup_lines, dup_line_chars = _duplicates(lines)
    signals["dup_line_frac"] = round(dup_lines / len(lines), 4)
    if cfg.dup_line_frac is not None and dup_lines / len(lines) > cfg.dup_line_frac:
        return Verdict(text, "dup_line_frac", signals)
    if cfg.dup_line_char_frac is not None and dup_line_chars / n_chars > cfg.dup_line_char_frac:
        return Verdict(text, "dup_line_char_frac", signals)
    if tokens is None:
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

# C4's own list (tensorflow_datasets c4_utils) for its optional terminal-punctuation line rule
_C4_END_PUNCT = (".", "?", "!", '"', "'")
_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_POLICY_SUBSTRINGS = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
)


def c4_lines(text: str, cfg: C4LinesConfig, line_words=str.split, count_sentences=words.sentences) -> Verdict:
    """Drop lines a web page is mostly made of that are not prose, then judge what remains. Each line
    goes through the reference's checks in the reference's order (tensorflow_datasets' c4_utils, as
    datatrove runs it): a page is dropped for "lorem ipsum" or "{" only in a line that survives the
    line rules before them. ``line_words`` splits a line into words (a segmenter for Chinese ...),
    ``count_sentences`` counts a line's sentences (pipelines/words.py: per language)."""
    kept: list[str] = []
    sentences = non_empty = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        non_empty += 1
        words_ = line_words(line)
        if cfg.max_word_length and any(len(w) > cfg.max_word_length for w in words_):
            continue
        if cfg.remove_citations:
            line = _CITATION_RE.sub("", line)
        if cfg.require_terminal_punctuation and (not line.endswith(_C4_END_PUNCT) or line.endswith("...")):
            continue
        if cfg.min_words_per_line and len(words_) < cfg.min_words_per_line:
            continue
        low = line.lower()
        if cfg.drop_lorem_ipsum and "lorem ipsum" in low:
            return Verdict(text, "lorem_ipsum")
        if cfg.drop_javascript_lines and "javascript" in low:
            continue
        if cfg.drop_curly_bracket and "{" in line:
            return Verdict(text, "curly_bracket")
        if cfg.drop_policy_lines and any(p in low for p in _POLICY_SUBSTRINGS):
            continue
        sentences += count_sentences(line)
        kept.append(line)
    signals = {"c4_lines_removed_frac": round(1 - len(kept) / non_empty, 4) if non_empty else 0.0}
    new_text = "\n".join(kept).strip()
    if not kept:
        return Verdict(new_text, "no_lines_left", signals)
    if cfg.min_sentences and sentences < cfg.min_sentences:
        return Verdict(new_text, "too_few_sentences", signals)
    return Verdict(new_text, None, signals)


# ---------------------------------------------------------------------------------------------
# FineWeb quality rules
# ---------------------------------------------------------------------------------------------


def fineweb_quality(text: str, cfg: FineWebQualityConfig, tokens: tuple[str, ...] | None = None) -> Verdict:
    """FineWeb's quality filter (Penedo et al. 2024; datatrove's FineWebQualityFilter): the share of
    lines ending in terminal punctuation (any script's), of short lines, of characters in repeated
    lines, and newlines per token (lists). Lines are the non-blank lines, unstripped, as in the
    reference. ``tokens``: the text's tokens when they are not English-like words (pipelines/words.py)."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        return Verdict(text, "empty")
    n = len(lines)
    ends = words.terminal_punctuation()
    punct = sum(1 for ln in lines if ln.endswith(ends)) / n
    signals: dict[str, float | int] = {"line_punct_frac": round(punct, 4)}
    no_prose_at_all_is_kept = punct == 0 and cfg.line_punct_exclude_zero
    if cfg.line_punct_thr is not None and punct < cfg.line_punct_thr and not no_prose_at_all_is_kept:
        return Verdict(text, "line_punct_ratio", signals)
    short = sum(1 for ln in lines if len(ln) <= cfg.short_line_length) / n
    signals["short_line_frac"] = round(short, 4)
    if cfg.short_line_thr is not None and short > cfg.short_line_thr:
        return Verdict(text, "short_line_ratio", signals)
    dup_chars = _duplicates(lines)[1] / (len(text) - text.count("\n"))
    signals["dup_line_char_frac"] = round(dup_chars, 4)
    if cfg.char_duplicates_ratio is not None and dup_chars > cfg.char_duplicates_ratio:
        return Verdict(text, "char_dup_ratio", signals)
    if cfg.new_line_ratio is not None:
        if tokens is None:
            tokens = tokenize_words(text)
        per_token = text.count("\n") / len(tokens) if tokens else float("inf")
        signals["newlines_per_word"] = round(min(per_token, 1e6), 4)
        if per_token > cfg.new_line_ratio:
            return Verdict(text, "list_ratio", signals)
    return Verdict(text, None, signals)


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
