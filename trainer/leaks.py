"""The ablation's leak check: no held-out text may be in what a variant trains on.

A held-out set measures how well a model predicts text it has not seen; if a variant's corpus (or the
quality classifier that chose a variant's documents) contains that text, the variant's score is a
memorisation score and the comparison is void. Before any training, every held-out set's distinct
word 13-grams (normalised as decontamination normalises: gristmill/ngrams.py) are looked up in

* every variant's corpus (all its kept documents), and
* every input the quality classifier of a variant was trained on, as its ``metadata.json`` lists them:
  by content when the file can be read here, else by SHA-256 against the held-out file itself.

A source holding more than ``ablate.max_heldout_overlap`` of a set's 13-grams (default 1 %: a crawl
quoting a famous line shares a few; a copy shares nearly all) is a leak: the ablation stops naming the
held-out file and the source, unless ``--allow-overlap`` is given, and the check is recorded in
results.json either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gristmill.ngrams import ngram_hashes, words

NGRAM = 13


def heldout_ngrams(texts: Iterable[str], n: int = NGRAM) -> set[int]:
    grams: set[int] = set()
    for t in texts:
        grams |= ngram_hashes(words(t), n)
    return grams


def found(grams: set[int], texts: Iterable[str], n: int = NGRAM) -> set[int]:
    """Those of ``grams`` that occur in ``texts``."""
    hits: set[int] = set()
    for t in texts:
        hits |= ngram_hashes(words(t), n) & grams
        if len(hits) == len(grams):
            break
    return hits


def shared(grams: set[int], texts: Iterable[str], n: int = NGRAM) -> int:
    """How many of ``grams`` occur in ``texts``."""
    return len(found(grams, texts, n))


def drop_copies(texts: list[str], sources: list[Source], max_share: float, n: int = NGRAM) -> tuple[list[str], int]:
    """``texts`` less each one sharing more than ``max_share`` of its n-grams with the sources (a document held
    out by id whose copy, under another id, is trained on), and how many that was. One pass over each source."""
    per_doc = [ngram_hashes(words(t), n) for t in texts]
    union = set().union(*per_doc) if per_doc else set()
    hits: set[int] = set()
    for src in sources:
        if src.texts is not None and union - hits:
            hits |= found(union - hits, src.texts(), n)
    kept = [t for t, g in zip(texts, per_doc) if not g or len(g & hits) / len(g) <= max_share]
    return kept, len(texts) - len(kept)


@dataclass(frozen=True)
class Source:
    """Something a variant trains on, or was chosen by: its name in messages, and its texts (None: not
    readable here; then ``sha256`` is compared with the held-out file's)."""

    name: str
    texts: Callable[[], Iterable[str]] | None
    sha256: str | None = None


def check(heldout: dict[str, tuple[list[str], str | None]], sources: list[Source], max_share: float,
          n: int = NGRAM) -> list[dict]:
    """Every (held-out set, source) pair: the share of the set's n-grams found in the source, and whether
    that is a leak. ``heldout``: name → (its normalised texts, the SHA-256 of its file)."""
    rows = []
    grams = {name: heldout_ngrams(texts, n) for name, (texts, _) in heldout.items()}
    for src in sources:
        for name, (_, sha) in heldout.items():
            if src.texts is None:
                same = bool(src.sha256 and sha and src.sha256 == sha)
                rows.append({"heldout": name, "source": src.name, "checked": "sha256",
                             "share": 1.0 if same else 0.0, "leak": same})
                continue
            total = len(grams[name])
            k = shared(grams[name], src.texts(), n) if total else 0
            share = k / total if total else 0.0
            rows.append({"heldout": name, "source": src.name, "checked": f"{n}-grams", "shared_ngrams": k,
                         "heldout_ngrams": total, "share": round(share, 6), "leak": share > max_share})
    return rows
