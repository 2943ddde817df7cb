"""Planted damage for the ablation's self-test (``ablate.variants[].damage``; docs/trainer.md).

An ablation that cannot tell a corpus from the same corpus with a share of its documents turned into
word salad cannot be trusted to tell two real recipes apart. :func:`shuffle_words` is a custom filter
(the built-in filters' contract: a pure function of the text and its params) that replaces a
``fraction`` of documents — chosen by a hash of their text, so the same ones on every runner — by a
copy with the same words in a shuffled order and the same line lengths: unigram statistics unchanged,
everything a language model learns beyond them destroyed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from gristmill.pipelines.filters import Verdict

FUNCTION = "gristmill.pipelines.damage:shuffle_words"


def _draw(text: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def shuffle_words(text: str, params: Mapping) -> Verdict:
    """Keep the document, or (for a ``params["fraction"]`` share of documents) its words shuffled across
    the whole document, each line keeping its number of words."""
    seed = int(params.get("seed", 0))
    if _draw(text, seed) >= float(params["fraction"]):
        return Verdict(text)
    lines = [line.split() for line in text.split("\n")]
    pool = [w for line in lines for w in line]
    random.Random(_draw(text, seed + 1)).shuffle(pool)
    out, at = [], 0
    for line in lines:
        out.append(" ".join(pool[at:at + len(line)]))
        at += len(line)
    return Verdict("\n".join(out))
