"""Filters of a user's own, as a test module: importable by name (``tests.extension_filters:...``)."""

from __future__ import annotations

import re

from gristmill.pipelines.filters import Verdict


def drop_keyword(text: str, params) -> Verdict:
    """Drops documents that contain one of ``params["words"]`` (case-insensitive, whole words)."""
    words = set(words_of(text))
    hit = sorted(w for w in params["words"] if w in words)
    return Verdict(text, "keyword" if hit else None, {"keyword_hits": len(hit)})


def shout(text: str, params) -> Verdict:
    return Verdict(text.upper())


def broken(text: str, params) -> Verdict:
    if "mill" in text:
        raise ValueError("this filter fails on mills")
    return Verdict(text)


def not_a_verdict(text: str, params):
    return True


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())
