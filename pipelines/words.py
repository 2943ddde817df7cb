"""Words and sentence ends in every script, for the word-based cleaning rules.

The Gopher, C4 and FineWeb rules count words (document length, mean word length, stop words, n-gram
repetition, words per line, newlines per word). In languages written with spaces a word is what
:func:`~gristmill.pipelines.filters.tokenize_words` finds (spaCy's English tokenizer, approximated).
Chinese, Japanese and Thai are written without spaces: there a whole line would be one "word", so every
page fails "at least 50 words" or passes "mean word length ≤ 10" by accident. Their text is segmented
by a dictionary segmenter instead (measured on Leipzig sentences, one core: bench/README.md):

* Chinese (zh, yue, wuu): rjieba, jieba's algorithm in Rust (~4.5 M characters/s);
* Japanese (ja): MeCab through fugashi with the UniDic-lite dictionary (~0.6 M characters/s);
* Thai (th): PyThaiNLP's newmm-safe (~0.6 M characters/s).

Khmer, Lao, Burmese, Tibetan and Dzongkha are written without spaces too but have no segmenter here:
for them :func:`segmenter` is None and the cleaner turns the word-based settings off (the line and
character rules still apply) and counts the documents under ``word_rules_skipped``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import cache, lru_cache

import regex

#: languages written without spaces between words, with the segmenter that splits them (None: none here)
NO_SPACE_LANGUAGES: dict[str, str | None] = {
    "zh": "zh", "yue": "zh", "wuu": "zh",
    "ja": "ja",
    "th": "th",
    "km": None, "lo": None, "my": None, "bo": None, "dz": None,
}


def _segment_zh() -> Callable[[str], list[str]]:
    import rjieba

    return rjieba.cut


def _segment_ja() -> Callable[[str], list[str]]:
    import fugashi
    import unidic_lite  # noqa: F401 - the dictionary fugashi's Tagger finds when full UniDic is not installed

    tagger = fugashi.Tagger("-Owakati")

    def cut(text: str) -> list[str]:
            return tagger.parse(text).split()

    return cut


def _segment_th() -> Callable[[str], list[str]]:
    from pythainlp.tokenize import word_tokenize

    def cut(text: str) -> list[str]:
        # newmm-safe: newmm that cuts pathological runs (no quadratic time on hostile input); datatrove's choice
        return word_tokenize(text, engine="newmm-safe", keep_whitespace=False)

    return cut


_SEGMENTERS = {"zh": _segment_zh, "ja": _segment_ja, "th": _segment_th}


@cache
def _loaded(kind: str) -> Callable[[str], list[str]]:
    return _SEGMENTERS[kind]()


def needs_segmenter(lang: str | None) -> bool:
    return (lang or "") in NO_SPACE_LANGUAGES


def segmenter(lang: str | None) -> Callable[[str], list[str]] | None:
    """The word segmenter of a language written without spaces (loaded once per process), or None when
    the language has spaces or no segmenter here."""
    kind = NO_SPACE_LANGUAGES.get(lang or "")
    return _loaded(kind) if kind else None


#: languages whose articles and pronouns elide into the next word (l'homme, dell'anno): spaCy splits
#: "l'" off, and FineWeb-2's stop words for them include such forms
_ELIDING = frozenset({"fr", "ca", "it"})
_ELISION = regex.compile(r"^([^\W\d_]{1,5}['’])([^\W\d_].*)$")


def _split_elisions(tokens: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for t in tokens:
        m = _ELISION.match(t) if ("'" in t or "’" in t) else None
        out.extend(m.groups() if m else (t,))
    return tuple(out)


@lru_cache(maxsize=4)  # the repetition, quality and FineWeb rules tokenize the same text one after the other
def tokens_of(text: str, lang: str | None) -> tuple[str, ...]:
    """The tokens of ``text`` in language ``lang``, punctuation included, whitespace dropped, as the
    language's spaCy tokenizer (FineWeb-2's) makes them: English splits hyphenated words, the other
    languages written with spaces keep them whole; French, Catalan and Italian split off elisions;
    Chinese, Japanese and Thai are segmented."""
    from gristmill.pipelines.filters import tokenize_words

    cut = segmenter(lang)
    if cut is not None:
        return tuple(t for t in (s.strip() for s in cut(text)) if t)
    if lang == "en" or lang is None:
        return tokenize_words(text)
    tokens = tokenize_words(text, False)
    return _split_elisions(tokens) if lang in _ELIDING else tokens


def line_words(lang: str | None) -> Callable[[str], list[str]]:
    """How C4's line rules split a line into words: at whitespace (as C4 did), or with the language's
    segmenter (a Chinese line is not one word)."""
    cut = segmenter(lang)
    if cut is None:
        return str.split
    return lambda line: [t for t in (s.strip() for s in cut(line)) if t and _WORD_CHAR.search(t)]


_WORD_CHAR = regex.compile(r"\w")


@lru_cache(maxsize=1)
def terminal_punctuation() -> tuple[str, ...]:
    """Characters that end a sentence in any script: Unicode's Sentence_Terminal property (. ! ? 。 ！ ？ ।
    ॥ ။ ። ؟ ...) plus Khmer's ៖ ៙ ៚; the set datatrove's TERMINAL_PUNCTUATION holds (FineWeb's line rule)."""
    every_char = "".join(map(chr, range(sys.maxunicode + 1)))
    found = set(regex.findall(r"\p{Sentence_Terminal}", every_char))
    return tuple(sorted(found | {"\u17d6", "\u17d9", "\u17da"}))


@lru_cache(maxsize=1)
def _sentence_break_re() -> re.Pattern:
    # a sentence ends at a run of terminal punctuation (closing quotes and brackets may follow) that is
    # followed by whitespace and more text: the boundaries spaCy's sentencizer finds, which C4 as
    # datatrove runs it counts. Chinese and Japanese put no space after 。！？: there the mark alone ends one
    ends = "".join(map(re.escape, terminal_punctuation()))
    return re.compile(f"(?:[{ends}]+[\"'”’)\\]]*\\s+|[。！？｡．]+[\"'”’)\\]」』]*)(?=\\S)")


#: words before a period that does not end a sentence (spaCy's English tokenizer keeps them whole, so
#: its sentencizer does not break there); single letters (initials) and dotted forms (U.S., Ph.D.) too
_ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt vs etc inc ltd co corp no nos vol fig eq approx dept est jan feb mar apr jun jul aug
sep sept oct nov dec mon tue wed thu fri sat sun gen col lt sgt capt gov sen rep rev ave blvd rd
""".split())


def _no_break_at(line: str, start: int) -> bool:
    """Whether the punctuation at ``start`` is not a sentence end: an ellipsis (spaCy's sentencizer
    breaks only at a mark standing alone), or the period of an abbreviation or an initial."""
    run = line[start:start + 2]
    if run in ("..", "…") or run[:1] == "…":
        return True
    if run[:1] != ".":
        return False
    word = line[line.rfind(" ", 0, start) + 1:start].lstrip("(\"'“‘[")
    return (len(word) == 1 and word.isalpha()) or word.lower() in _ABBREVIATIONS or (
        "." in word and all(0 < len(p) <= 2 and p.isalpha() for p in word.split(".")))


def sentences(line: str) -> int:
    """Sentences in a line (at least one)."""
    return 1 + sum(1 for m in _sentence_break_re().finditer(line) if not _no_break_at(line, m.start()))


def _space_separated(line: str) -> int:
    return len(line.split())


#: languages that end sentences (and clauses) with a space, not a mark
_SPACE_ENDS_SENTENCES = frozenset({"th", "lo"})


def sentence_counter(lang: str | None) -> Callable[[str], int]:
    """How to count a line's sentences in ``lang``: Thai and Lao put a space where other scripts put a
    full stop, so there every space-separated part counts."""
    return _space_separated if lang in _SPACE_ENDS_SENTENCES else sentences
