"""The ``tokenize`` pipeline: corpus shards → packed token sequences for training (Apache Beam).

Each document is encoded with the SentencePiece model and followed by eos (preceded by bos if
``tokenize.add_bos``), assigned to train or val by a hash of its id, and to one of B buckets by
another hash. A bucket (a GroupByKey group, bounded by ``tokenize.max_sequences_per_shard``
sequences) is sorted by id, concatenated and cut into sequences of ``seq_len + 1`` tokens (inputs
and shifted targets); the last partial sequence of each bucket is dropped and counted. Each bucket
becomes one token shard (the format: :mod:`gristmill.tokenizer.tokens`)::

    OUTPUT/train/part-NNNNN.arrow, OUTPUT/val/part-NNNNN.arrow, OUTPUT/manifest.json

``tokenize.select`` tokenizes part of the corpus; ``tokenize.rehydrate`` repeats train documents by
their near-duplicate cluster size (FineWeb-2), each copy in a bucket of its own hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa

from gristmill import __version__, io
from gristmill.config import TokenizeConfig, TokenizeSelectConfig
from gristmill.documents import check_corpus_shards, iter_shard_rows, read_manifest, shard_size_bound
from gristmill.locks import directory_lock
from gristmill.outputs import begin_output, check_output, recorded_run
from gristmill.pipelines.runner import (
    check_runner,
    collect_stats,
    read_stats,
    remove_stats,
    run_pipeline,
)
from gristmill.pipelines.workpool import PooledWorkFn, plan_local_workers, stop_pools
from gristmill.tokenizer.tokens import SPLITS, pack, shard_bytes, token_dtype
from gristmill.tokenizer.train import TokenizerError, load, model_file

log = logging.getLogger("gristmill.tokenize")

#: characters per token assumed when sizing buckets before anything is encoded
CHARS_PER_TOKEN_ESTIMATE = 3.0


def select_columns(select: TokenizeSelectConfig) -> list[str]:
    """The corpus columns ``tokenize.select`` reads, beyond id, text and lang."""
    cols = ["quality_score"] if select.min_quality_score is not None or select.max_quality_score is not None else []
    return cols + [c for c in select.columns if c not in ("id", "text", "lang", *cols)]


def is_selected(row: dict, select: TokenizeSelectConfig) -> bool:
    """Whether a document (its columns by name) is tokenized under ``tokenize.select``."""
    if select.langs and row["lang"] not in select.langs:
        return False
    q = row.get("quality_score")
    if select.min_quality_score is not None and (q is None or q < select.min_quality_score):
        return False
    if select.max_quality_score is not None and (q is None or q >= select.max_quality_score):
        return False
    return all(row[c] in allowed for c, allowed in select.columns.items())


def check_select(corpus: str, manifest: dict, select: TokenizeSelectConfig) -> dict:
    """Before the job: every column ``select`` names exists in the corpus, and how many documents it keeps
    (read from the shards' columns, not their text)."""
    if select.min_quality_score is not None and select.max_quality_score is not None \
            and select.min_quality_score >= select.max_quality_score:
        raise TokenizerError(f"tokenize.select: min_quality_score {select.min_quality_score} must be below "
                             f"max_quality_score {select.max_quality_score}")
    first = io.join(corpus, manifest["shards"][0]["path"])
    names = set(io.ipc_schema(first).names)
    needed = ["lang", *select_columns(select)]
    for c in needed:
        if c not in names:
            raise TokenizerError(f"tokenize.select: {corpus} has no column {c!r}; its columns: "
                                 f"{', '.join(sorted(names))}")
    scored = manifest.get("config", {}).get("clean", {}).get("quality", {}).get("enabled", False)
    if "quality_score" in needed and not scored:
        raise TokenizerError(f"tokenize.select: a quality bucket needs quality scores, and {corpus} was written "
                             "without them: run `gristmill corpus` with clean.quality.enabled: true")
    kept = 0
    for entry in manifest["shards"]:
        for values in iter_shard_rows(io.join(corpus, entry["path"]), needed):
            kept += is_selected(dict(zip(needed, values)), select)
    total = manifest["counts"]["kept"]
    if kept == 0:
        raise TokenizerError(f"tokenize.select keeps none of the {total:,} documents of {corpus}: "
                             f"{select.model_dump(mode='json', exclude_defaults=True)}")
    return {"documents_selected": kept, "documents_skipped": total - kept,
            "conditions": select.model_dump(mode="json", exclude_defaults=True)}


def copies_for(cluster_size: int | None, steps: tuple[tuple[int, int], ...]) -> int:
    """How many times rehydration puts a document in the train split: the copies of the last step whose
    min_size ≤ its cluster size (a document without a cluster is a cluster of one)."""
    size, copies = cluster_size or 1, 1
    for min_size, n in steps:
        if size >= min_size:
            copies = n
    return copies


def _unit(key: str, seed: int) -> float:
    h = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


#: the work kept per corpus shard for a rerun (see EncodeShardFn)
WORK_DIR = "_work"
_WORK_SCHEMA = pa.schema([("split", pa.string()), ("bucket", pa.int32()), ("id", pa.string()),
                          ("lang", pa.string()), ("tokens", pa.list_(pa.uint32())), ("copy", pa.int32())])


class EncodeShardFn(PooledWorkFn):
    """One corpus shard → ((split, bucket), (id, token ids, lang)) for each of its documents: each
    document encoded and followed by eos (after bos with ``add_bos``), assigned to train or val by a
    hash of its id and to a bucket by another.

    The encoded shard is also kept in ``OUTPUT/_work/`` (keyed by the shard's SHA-256 and what
    encoding depends on) until the run ends: a run started again after a crash reuses the shards
    already encoded. With ``pool_workers`` > 1 the shards are encoded in forked children and
    replayed from their work files (pipelines/workpool.py)."""

    def __init__(self, model: bytes, cfg: TokenizeConfig, n_buckets: int, bos: int, eos: int, work_dir: str,
                 pool_workers: int = 1):
        super().__init__(pool_workers)
        self.model, self.cfg, self.n_buckets, self.bos, self.eos = model, cfg, n_buckets, bos, eos
        self.work_dir = work_dir
        blob = json.dumps([hashlib.sha256(model).hexdigest(), cfg.model_dump(mode="json"), n_buckets, __version__])
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()
        self.sp = None

    def __getstate__(self):
        return {**super().__getstate__(), "sp": None}

    def setup(self):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=self.model)

    def _work_path(self, item) -> str:
        _, sha256 = item
        return io.join(self.work_dir, f"{self.fingerprint[:16]}-{sha256}.arrow")

    def process_direct(self, item):
        if io.exists(self._work_path(item)):
            yield from self.replay(item, True)
            return
        yield from self._encode_shard(item)

    def work_to_file(self, item) -> bool:
        """Whether an earlier run had encoded the shard; either way its work file is complete."""
        if io.exists(self._work_path(item)):
            return True
        for _ in self._encode_shard(item):
            pass
        return False

    def replay(self, item, reused: bool):
        if reused:
            log.info("%s: reusing its encoding from an earlier run", item[0])
        for batch in io.iter_batches(self._work_path(item)):
            for row in batch.to_pylist():
                yield (row["split"], row["bucket"]), (row["id"], np.asarray(row["tokens"], np.uint32), row["lang"],
                                                      row.get("copy") or 0)

    def _encode_shard(self, item):
        path, _ = item
        writer = io.ArrowFileWriter(self._work_path(item), _WORK_SCHEMA)
        select, steps = self.cfg.select, self.cfg.rehydrate
        columns = ["id", "text", "lang", *select_columns(select)]
        if steps and "cluster_size" not in columns:
            columns.append("cluster_size")
        filtered = select.active or bool(steps)  # a row by column name only where something reads it
        for values in iter_shard_rows(path, columns):
            doc_id, text, lang = values[:3]
            row = dict(zip(columns, values)) if filtered else None
            if select.active and not is_selected(row, select):
                continue
            key, value = self.encode(doc_id, text, lang)
            copies = copies_for(row["cluster_size"], steps) if steps and key[0] == "train" else 1
            for copy in range(copies):
                if copy:  # a copy lands in a bucket of its own hash: not next to the original
                    key = (key[0], int(_unit(f"{doc_id}\x00{copy}", self.cfg.seed + 1) * self.n_buckets))
                writer.add({"split": key[0], "bucket": key[1], "id": doc_id, "lang": lang, "tokens": value[1],
                            "copy": copy})
                yield key, (*value, copy)
        writer.close()

    def encode(self, doc_id: str, text: str, lang: str):
        ids = self.sp.encode(text)
        if self.cfg.add_bos:
            ids = [self.bos, *ids]
        ids.append(self.eos)
        split = "val" if _unit(doc_id, self.cfg.seed) < self.cfg.val_fraction else "train"
        bucket = int(_unit(doc_id, self.cfg.seed + 1) * self.n_buckets)
        return (split, bucket), (doc_id, np.asarray(ids, dtype=np.uint32), lang)


class _WriteBucketFn(beam.DoFn):
    def __init__(self, output: str, seq_len: int, dtype_name: str):
        self.output, self.seq_len, self.dtype_name = output, seq_len, dtype_name

    def process(self, item):
        (split, bucket), docs = item
        docs = list(docs)
        # (id, copy): a rehydrated copy sorts after its original when both land in one bucket
        seqs, dropped = pack([((d, c), t) for d, t, _, c in docs], self.seq_len)
        rel = f"{split}/part-{bucket:05d}.arrow"
        if len(seqs):
            data = shard_bytes(seqs, self.dtype_name)
            io.write_bytes_atomic(io.join(self.output, rel), data)
        per_lang: dict[str, int] = {}
        for _, t, lang, _ in docs:
            per_lang[lang] = per_lang.get(lang, 0) + int(t.size)
        yield {
            "path": rel if len(seqs) else None,
            "split": split,
            "documents": sum(1 for *_, c in docs if c == 0),
            "copies": sum(1 for *_, c in docs if c > 0),
            "sequences": int(len(seqs)),
            "tokens": int(sum(t.size for _, t, _, _ in docs)),
            "tokens_dropped": dropped,
            "tokens_by_lang": per_lang,
            "sha256": hashlib.sha256(data).hexdigest() if len(seqs) else None,
        }


@dataclass
class TokenizeResult:
    manifest: dict
    manifest_path: str
    seconds: float


def run_tokenize(corpus: str, tokenizer: str, output: str, cfg: TokenizeConfig,
                 beam_args: list[str] | None = None, overwrite: bool = False, fresh: bool = False) -> TokenizeResult:
    """Run the tokenize pipeline. One run at a time writes ``output`` (a lock), none rewrites
    ``corpus`` meanwhile (a shared lock); ``run.json`` records how the run ended. Run again after a
    crash, it reuses the corpus shards already encoded (``fresh`` ignores them)."""
    t0 = time.time()
    check_runner(beam_args)
    io.configure(beam_args)  # the driver reads and writes the same stores as the workers
    output = output.rstrip("/") if io.is_remote(output) else os.path.abspath(output)
    manifest = read_manifest(corpus)
    if manifest.get("kind") != "corpus":
        raise TokenizerError(f"{corpus} is not a corpus directory (manifest kind {manifest.get('kind')!r})")
    if not manifest["shards"]:
        raise TokenizerError(f"corpus {corpus} is empty (0 documents kept): nothing to tokenize")
    try:
        check_corpus_shards(corpus, manifest)
    except ValueError as e:
        raise TokenizerError(str(e)) from None
    sp = load(tokenizer)
    model = io.read_bytes(model_file(tokenizer))
    vocab = sp.get_piece_size()
    dtype = token_dtype(vocab)
    selection = check_select(corpus, manifest, cfg.select) if cfg.select.active else None
    total_chars = sum(shard_size_bound(corpus, s) for s in manifest["shards"])  # an upper bound: bytes ≥ text
    per_bucket = cfg.max_sequences_per_shard * (cfg.seq_len + 1)
    n_buckets = max(1, math.ceil(total_chars / CHARS_PER_TOKEN_ESTIMATE / per_bucket))
    check_output(output, "tokens", overwrite)
    with contextlib.ExitStack() as held:
        held.enter_context(directory_lock(output, "tokenize"))
        held.enter_context(directory_lock(corpus, "tokenize", shared=True))
        record = held.enter_context(recorded_run(output, "tokenize"))
        begin_output(output, "tokens")
        plan = _Plan(corpus, manifest, tokenizer, model, vocab, sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.unk_id(),
                     np.dtype(dtype).name, n_buckets, selection)
        if fresh:
            io.remove_tree(io.join(output, WORK_DIR))
        io.remove_temporaries(output)  # left by a crashed run
        try:
            result = _tokenize(plan, output, cfg, beam_args, t0)
        finally:
            stop_pools()  # a failing or stopped run: no child may still be writing
            remove_stats(output)
            io.remove_temporaries(output)
        io.remove_tree(io.join(output, WORK_DIR))  # done: nothing left to resume
        record.update(splits={k: {x: v[x] for x in ("documents", "tokens", "sequences")}
                              for k, v in result.manifest["splits"].items()}, manifest=result.manifest_path)
        return result


@dataclass(frozen=True)
class _Plan:
    """What the driver learnt before the job: the corpus, the tokenizer, the bucket count."""

    corpus: str
    manifest: dict  # the corpus's
    tokenizer: str
    model: bytes  # the SentencePiece model, shipped to the workers
    vocab: int
    bos: int
    eos: int
    pad: int
    unk: int
    dtype: str
    n_buckets: int
    selection: dict | None = None  # tokenize.select's counts (None: every document)


def _tokenize(plan: _Plan, output: str, cfg: TokenizeConfig, beam_args, t0: float) -> TokenizeResult:
    corpus, manifest, tokenizer, model = plan.corpus, plan.manifest, plan.tokenizer, plan.model
    workers, beam_args = plan_local_workers(beam_args)
    if workers > 1:
        log.info("encoding on %d processes", workers)

    def build(p):
        buckets = (
            p
            | "Shards" >> beam.Create(sorted((io.join(corpus, s["path"]), s["sha256"]) for s in manifest["shards"]))
            | "Spread" >> beam.Reshuffle()
            | "Encode" >> beam.ParDo(EncodeShardFn(model, cfg, plan.n_buckets, plan.bos, plan.eos,
                                                   io.join(output, WORK_DIR), workers))
            | "Bucket" >> beam.GroupByKey()
            | "Pack" >> beam.ParDo(_WriteBucketFn(output, cfg.seq_len, plan.dtype))
        )
        return collect_stats("buckets", buckets, output)

    run_pipeline(build, beam_args)
    entries = sorted(read_stats(output, "buckets"), key=lambda e: (e["split"], e["path"] or ""))
    splits = {}
    for split in SPLITS:
        es = [e for e in entries if e["split"] == split]
        langs: dict[str, int] = {}
        for e in es:
            for lang, n in e["tokens_by_lang"].items():
                langs[lang] = langs.get(lang, 0) + n
        splits[split] = {
            "documents": sum(e["documents"] for e in es),
            "tokens": sum(e["tokens"] for e in es),
            "sequences": sum(e["sequences"] for e in es),
            "tokens_in_sequences": sum(e["sequences"] for e in es) * (cfg.seq_len + 1),
            "tokens_dropped": sum(e["tokens_dropped"] for e in es),
            "tokens_by_lang": dict(sorted(langs.items(), key=lambda kv: -kv[1])),
            "shards": [{k: e[k] for k in ("path", "sequences", "sha256")} for e in es if e["path"]],
        }
        if cfg.rehydrate:  # documents counts each document once; copies, the extra times rehydration added
            splits[split]["copies"] = sum(e["copies"] for e in es)
    docs = sum(s["documents"] for s in splits.values())
    expected = plan.selection["documents_selected"] if plan.selection else manifest["counts"]["kept"]
    if docs != expected:
        raise RuntimeError(f"accounting error: tokenized {docs} documents, expected {expected} "
                           f"(corpus {manifest['counts']['kept']}, selection {plan.selection})")
    keep = {s["path"] for sp_ in splits.values() for s in sp_["shards"]}
    stale = [r for r in io.list_files(output, "train/") + io.list_files(output, "val/") if r not in keep]
    if stale:
        io.delete([io.join(output, r) for r in stale])
    tok_meta_path = io.join(tokenizer, "tokenizer_meta.json") if model_file(tokenizer) != tokenizer else None
    out = {
        "gristmill_version": __version__,
        "kind": "tokens",
        "corpus": corpus,
        "corpus_manifest_sha256": hashlib.sha256(io.json_bytes(manifest)).hexdigest(),
        "tokenizer": os.path.abspath(tokenizer) if not io.is_remote(tokenizer) else tokenizer,
        "tokenizer_model_sha256": hashlib.sha256(model).hexdigest(),
        "tokenizer_meta": io.read_json(tok_meta_path) if tok_meta_path and io.exists(tok_meta_path) else None,
        "vocab_size": plan.vocab,
        "dtype": plan.dtype,
        "seq_len": cfg.seq_len,
        "config": cfg.model_dump(mode="json"),
        "special_tokens": {"bos": plan.bos, "eos": plan.eos, "pad": plan.pad, "unk": plan.unk},
        "buckets": plan.n_buckets,
        "splits": splits,
    }
    if plan.selection:
        out["select"] = plan.selection
    if cfg.rehydrate:
        out["rehydrate"] = {"steps": [list(x) for x in cfg.rehydrate], "copies_added": splits["train"]["copies"]}
    path = io.join(output, "manifest.json")
    io.write_json_atomic(path, out)
    return TokenizeResult(out, path, time.time() - t0)
