"""Word n-grams of normalised text, as decontamination and the ablation's leak check compare them:
NFKC, casefolded, Unicode words only (punctuation and spacing do not matter), each n-gram a 64-bit hash."""

from __future__ import annotations

import unicodedata

import regex
import xxhash

_WORD = regex.compile(r"\w+")


def words(text: str) -> list[str]:
    """The normalised words of a text: NFKC, casefolded, Unicode word characters only."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def ngram_hash(ws: list[str]) -> int:
    return xxhash.xxh3_64_intdigest(" ".join(ws).encode("utf-8", "surrogatepass"))


def ngram_hashes(ws: list[str], n: int) -> set[int]:
    """Hashes of every n-word window of ``ws`` (none if it is shorter)."""
    return {ngram_hash(ws[i:i + n]) for i in range(len(ws) - n + 1)}
