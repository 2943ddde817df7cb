"""Decontamination: documents that share an n-gram with evaluation data are dropped.

As GPT-3 (Brown et al. 2020, appendix C) and datatrove's n-gram decontamination: texts are
normalised (NFKC, casefolded, split into Unicode words: punctuation and spacing do not matter) and
a document sharing any ``decontaminate.ngram``-word sequence (13 by default) with an evaluation
text is dropped as ``decontaminate:ngram_overlap``; its rejected record's ``detail`` names the
evaluation file, the item (0-based record number) and the field that matched.

Evaluation texts: every string of a JSONL record (``decontaminate.fields`` narrows it to the named
fields; dotted paths reach into objects, lists give each string). A text shorter than ``ngram``
words is matched whole (as datatrove does) when it has at least ``decontaminate.min_words`` words;
a shorter one is ignored and counted in the manifest: a two-word answer ("18 dollars") occurs
in countless innocent documents.

In Beam the evaluation n-grams and the documents' n-grams meet in a ``CoGroupByKey`` on the n-gram
hash, and the matches reach their documents in a second one on the document: no side input (the
DaskRunner cannot evaluate side inputs), and no worker holds the evaluation set. The cost is a
shuffle of every kept document's distinct n-gram hashes (8 bytes + its key each) and one of the
kept documents.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field

import apache_beam as beam

from gristmill import io
from gristmill.config import DecontaminateConfig
from gristmill.dedupe.components import node_key
from gristmill.documents import dropped, field_at
from gristmill.errors import ExitCode, GristmillError
from gristmill.ngrams import ngram_hash, ngram_hashes, words

REASON = "decontaminate:ngram_overlap"


class DecontaminationError(GristmillError):
    """Evaluation files that cannot be used; the message names the file and the config key."""

    exit_code = ExitCode.USAGE


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def text_ngrams(text: str, n: int, min_words: int) -> tuple[set[int], int | None]:
    """An evaluation text's n-gram hashes, and its length when it is matched whole (shorter than
    ``n`` words but at least ``min_words``); no hashes if it is shorter still."""
    ws = words(text)
    if len(ws) >= n:
        return ngram_hashes(ws, n), None
    if len(ws) >= min_words:
        return {ngram_hash(ws)}, len(ws)
    return set(), None


def document_ngrams(text: str, n: int, short_lengths: tuple[int, ...] = ()) -> set[int]:
    """A document's n-gram hashes, plus its k-gram hashes for each length k of the evaluation texts
    matched whole."""
    ws = words(text)
    out = ngram_hashes(ws, n)
    for k in short_lengths:
        out |= ngram_hashes(ws, k)
    return out


def _strings(value, path: str):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}.{i}" if path else str(i))


def evaluation_texts(record, fields: tuple[str, ...]) -> list[tuple[str, str]]:
    """(field path, text) of each non-blank evaluation text of one record."""
    if fields:
        found = [x for f in fields for x in _strings(field_at(record, f) if isinstance(record, dict) else None, f)]
    else:
        found = list(_strings(record, ""))
    return [(f, t) for f, t in found if t.strip()]


def detail(ref: tuple[str, int, str]) -> str:
    """The rejected record's ``detail``: which evaluation file, item and field matched."""
    path, item, fld = ref
    return json.dumps({"eval_file": path, "item": item, "field": fld}, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Evaluation files: checked by the driver before any work, read again by the workers
# ---------------------------------------------------------------------------------------------


def _records(path: str):
    """(line number, record) of a JSONL file (``.gz`` too); a line that is not JSON is an error."""
    data = io.read_bytes(path)
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except ValueError as e:
            raise DecontaminationError(f"decontaminate.files: {path} line {lineno} is not JSON ({e})") from None


def evaluation_items(path: str, cfg: DecontaminateConfig):
    """(item number, field, n-gram hashes, whole-match length or None) of each evaluation text of a file."""
    for item, (_, record) in enumerate(_records(path)):
        for fld, text in evaluation_texts(record, cfg.fields):
            hashes, whole = text_ngrams(text, cfg.ngram, cfg.min_words)
            yield item, fld, hashes, whole


@dataclass
class EvaluationSets:
    """What the driver learned of the evaluation files: per file its counts, and the lengths of the
    texts matched whole (the documents' extra k-grams)."""

    files: list[dict] = field(default_factory=list)
    short_lengths: tuple[int, ...] = ()

    def manifest_entry(self, cfg: DecontaminateConfig, dropped_docs: int) -> dict:
        return {"ngram": cfg.ngram, "min_words": cfg.min_words, "fields": list(cfg.fields), "files": self.files,
                "documents_dropped": dropped_docs}


def load_evaluation_sets(cfg: DecontaminateConfig) -> EvaluationSets:
    """Check every evaluation file (it exists, is JSONL, has text in the fields) and count it; a
    DecontaminationError names the file and the key to fix."""
    out, lengths = EvaluationSets(), set()
    for path in cfg.files:
        if not io.exists(path):
            raise DecontaminationError(f"decontaminate.files: {path} not found")
        texts = matched_whole = ignored = 0
        items: set[int] = set()
        ngrams: set[int] = set()
        for item, _, hashes, whole in evaluation_items(path, cfg):
            items.add(item)
            texts += 1
            ngrams |= hashes
            if whole is not None:
                matched_whole += 1
                lengths.add(whole)
            elif not hashes:
                ignored += 1
        if not texts:
            where = f"in the field(s) {list(cfg.fields)} (decontaminate.fields)" if cfg.fields else "in any field"
            raise DecontaminationError(f"decontaminate.files: {path} has no evaluation text {where}")
        if not ngrams:
            raise DecontaminationError(f"decontaminate.files: every text of {path} is shorter than "
                                       f"decontaminate.min_words ({cfg.min_words}) words: nothing to match")
        out.files.append({"path": path, "items_with_text": len(items), "texts": texts, "ngrams": len(ngrams),
                          "texts_matched_whole": matched_whole, "texts_too_short_ignored": ignored})
    out.short_lengths = tuple(sorted(lengths))
    return out


# ---------------------------------------------------------------------------------------------
# Beam
# ---------------------------------------------------------------------------------------------


def _evaluation_pairs(path: str, cfg: DecontaminateConfig):
    for item, fld, hashes, _ in evaluation_items(path, cfg):
        for h in hashes:
            yield h, (path, item, fld)


def _document_pairs(doc: dict, n: int, short_lengths: tuple[int, ...]):
    node = node_key(doc["id"], doc["source"])
    for h in document_ngrams(doc["text"], n, short_lengths):
        yield h, node


def _matches(item):
    """One n-gram's group: each document holding it, with the smallest evaluation text holding it."""
    _, joined = item
    refs = joined["eval"]
    if not refs:
        return
    ref = min(refs)
    for node in joined["doc"]:
        yield node, ref


def _mark(item):
    _, joined = item
    ref = min(joined["match"]) if joined["match"] else None
    for doc in joined["doc"]:
        yield dropped({**doc}, REASON, detail(ref)) if ref else doc  # a copy: inputs are immutable


class Decontaminate(beam.PTransform):
    """Kept documents → the same documents, those sharing an n-gram with an evaluation text marked
    ``decontaminate:ngram_overlap`` (``detail``: the evaluation file, item and field; the smallest
    when several match). ``short_lengths``: the lengths of the evaluation texts matched whole
    (:func:`load_evaluation_sets`; read from the files when not given)."""

    def __init__(self, cfg: DecontaminateConfig, short_lengths: tuple[int, ...] | None = None):
        super().__init__()
        self.cfg = cfg
        self.short_lengths = short_lengths if short_lengths is not None else load_evaluation_sets(cfg).short_lengths

    def expand(self, docs):
        cfg, lengths = self.cfg, self.short_lengths
        evaluation = (
            docs.pipeline
            | "EvalFiles" >> beam.Create(sorted(set(cfg.files)))
            | "EvalNgrams" >> beam.FlatMap(_evaluation_pairs, cfg)
        )
        doc_ngrams = docs | "DocNgrams" >> beam.FlatMap(_document_pairs, cfg.ngram, lengths)
        matches = (
            {"eval": evaluation, "doc": doc_ngrams}
            | "JoinNgrams" >> beam.CoGroupByKey()
            | "Matches" >> beam.FlatMap(_matches)
        )
        by_node = docs | "ByNode" >> beam.Map(lambda d: (node_key(d["id"], d["source"]), d))
        return {"doc": by_node, "match": matches} | "JoinMatches" >> beam.CoGroupByKey() | "Mark" >> beam.FlatMap(_mark)
