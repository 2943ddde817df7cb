"""Train a SentencePiece model from the Arrow shards of a corpus, streaming.

Documents are read shard by shard (never a text dump), sampled per language by a hash of their id
(deterministic), split into lines, and handed to SentencePiece through ``sentence_iterator``;
SentencePiece samples ``input_sentence_size`` of them with a fixed seed. Output directory:

    tokenizer.model, tokenizer.vocab       SentencePiece
    tokenizer.json, tokenizer_config.json  Hugging Face (same ids, chat template), special_tokens_map.json
    tokenizer_meta.json                    config, corpus manifest hash, counts, versions
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from io import BytesIO

from gristmill import io
from gristmill.config import TokenizerConfig
from gristmill.documents import check_corpus_shards, iter_shard_rows, read_manifest
from gristmill.errors import GristmillError
from gristmill.outputs import begin_output, check_output

log = logging.getLogger("gristmill.tokenizer")

SPECIAL = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
SPECIAL_IDS = {"unk": 0, "bos": 1, "eos": 2, "pad": 3}
#: always reserved (after the configured user-defined symbols): masked language modelling replaces tokens with it
MASK = "<mask>"
MODEL_FILE = "tokenizer.model"


class TokenizerError(GristmillError):
    """A tokenizer that cannot be trained or loaded; the message names the file and what to change."""


def _keep_fraction(doc_id: str, seed: int) -> float:
    h = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def iter_corpus_lines(corpus: str, cfg: TokenizerConfig, stats: Counter | None = None, share: float = 1.0):
    """Lines of the corpus's documents, language-sampled, in manifest (shard) order; ``share``: the
    fraction of documents read (chosen by a hash of the id: the same ones every time)."""
    manifest = read_manifest(corpus)
    stats = stats if stats is not None else Counter()
    for entry in manifest["shards"]:
        for doc_id, text, lang in iter_shard_rows(io.join(corpus, entry["path"]), ["id", "text", "lang"]):
            if share < 1.0 and _keep_fraction(doc_id, cfg.seed + 1) >= share:
                stats["documents_skipped_for_the_mix"] += 1
                continue
            weight = cfg.language_weights.get(lang, cfg.default_language_weight)
            if weight < 1.0 and _keep_fraction(doc_id, cfg.seed) >= weight:
                stats["documents_skipped"] += 1
                continue
            stats["documents"] += 1
            stats[f"lang:{lang}"] += 1
            for line in text.split("\n"):
                if line.strip():
                    stats["lines"] += 1
                    yield line


def reserved_symbols(cfg: TokenizerConfig) -> list[str]:
    """The user-defined pieces a tokenizer reserves: the configured ones, then ``<mask>`` (MLM) if not among them."""
    return [*cfg.user_defined_symbols, *([MASK] if MASK not in cfg.user_defined_symbols else [])]


def trainer_options(cfg: TokenizerConfig) -> dict:
    return {
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "character_coverage": cfg.character_coverage,
        "input_sentence_size": cfg.input_sentence_size,
        "shuffle_input_sentence": True,
        "max_sentence_length": cfg.max_sentence_length,
        "byte_fallback": cfg.byte_fallback,
        "split_digits": cfg.split_digits,
        "normalization_rule_name": cfg.normalization,
        "remove_extra_whitespaces": False,  # keep the text's spacing (code, tables) exactly
        # no dummy "▁" before the first word: a document's first word is tokenized as it is written
        # (as GPT-style BPEs do), and tokenizer.json can reproduce every segmentation exactly
        "add_dummy_prefix": False,
        "user_defined_symbols": reserved_symbols(cfg),
        "unk_id": SPECIAL_IDS["unk"],
        "bos_id": SPECIAL_IDS["bos"],
        "eos_id": SPECIAL_IDS["eos"],
        "pad_id": SPECIAL_IDS["pad"],
        "unk_piece": SPECIAL["unk"],
        "bos_piece": SPECIAL["bos"],
        "eos_piece": SPECIAL["eos"],
        "pad_piece": SPECIAL["pad"],
        "num_threads": cfg.num_threads,
        "minloglevel": 2,
    }


@dataclass
class TrainResult:
    output: str
    meta: dict
    seconds: float


class _TrainingProgress:
    """SentencePiece reads every sentence first, then trains without a word: the documents read (a
    bar on a terminal), then one line when training starts and a ticking clock until it ends."""

    def __init__(self, documents: int, cfg: TokenizerConfig, bar: bool):
        self.documents, self.cfg, self.bar_enabled = documents, cfg, bar
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lines(self, it, stats: Counter):
        bar = None
        if self.bar_enabled:
            from tqdm import tqdm

            bar = tqdm(total=self.documents, desc="reading the corpus", unit="doc", leave=False, dynamic_ncols=True)
        seen = 0
        for line in it:
            if bar is not None and stats["documents"] + stats["documents_skipped"] != seen:
                bar.update(stats["documents"] + stats["documents_skipped"] - seen)
                seen = stats["documents"] + stats["documents_skipped"]
            yield line
        if bar is not None:
            bar.close()
        log.info("read %s lines from %s documents in %.1f s; training SentencePiece (%s, vocabulary %s)",
                 f"{stats['lines']:,}", f"{stats['documents']:,}", time.monotonic() - self.t0, self.cfg.model_type,
                 f"{self.cfg.vocab_size:,}")
        self.training_started = time.monotonic()
        if self.bar_enabled:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        from tqdm import tqdm

        with tqdm(desc="training SentencePiece", bar_format="{desc}: {elapsed}", leave=False) as clock:
            while not self._stop.wait(1.0):
                clock.refresh()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc[0] is None and hasattr(self, "training_started"):
            log.info("trained in %.1f s", time.monotonic() - self.training_started)


def _checked_manifest(corpus: str) -> dict:
    manifest = read_manifest(corpus)
    if manifest.get("kind") != "corpus":
        what = "a token directory (written by `gristmill tokenize`)" if manifest.get("kind") == "tokens" else \
            f"not a corpus (manifest kind {manifest.get('kind')!r})"
        raise TokenizerError(f"{corpus} is {what}: pass the corpus directory `gristmill corpus` wrote")
    if manifest["counts"]["kept"] == 0 or not manifest["shards"]:
        raise TokenizerError(f"corpus {corpus} is empty (0 documents kept): nothing to train a tokenizer on")
    try:
        check_corpus_shards(corpus, manifest)
    except ValueError as e:
        raise TokenizerError(str(e)) from None
    return manifest


def train_tokenizer(corpus: str | list[str], output: str, cfg: TokenizerConfig, progress: bool = True,
                    overwrite: bool = False) -> TrainResult:
    """Train on ``corpus`` and write the tokenizer to ``output``: a new directory, or one an earlier
    ``tokenizer train`` wrote (its marker file), unless ``overwrite``. Several corpora are an equal mix:
    each gives as many documents as the smallest (a hash-chosen share of its documents)."""
    import sentencepiece as spm

    t0 = time.time()
    check_output(output, "tokenizer", overwrite)  # before hours of training, not after
    corpora = [corpus] if isinstance(corpus, str) else list(corpus)
    manifests = [_checked_manifest(c) for c in corpora]
    kept = [m["counts"]["kept"] for m in manifests]
    shares = [min(kept) / k for k in kept]
    stats: Counter = Counter()
    model = BytesIO()
    spm.set_random_generator_seed(cfg.seed)
    watch = _TrainingProgress(round(sum(k * f for k, f in zip(kept, shares))), cfg,
                              bar=progress and sys.stderr.isatty())
    lines = (line for c, f in zip(corpora, shares) for line in iter_corpus_lines(c, cfg, stats, f))
    corpus = corpora[0] if len(corpora) == 1 else ", ".join(corpora)  # as messages name it
    try:
        with watch:
            spm.SentencePieceTrainer.train(
                sentence_iterator=watch.lines(lines, stats), model_writer=model, **trainer_options(cfg)
            )
    except RuntimeError as e:
        msg = str(e).strip()
        seen = f"({stats['lines']:,} lines from {stats['documents']:,} documents)"
        if "smaller than required_chars" in msg:
            import re

            m = re.search(r"(\d+) vs (\d+)", msg)
            need = f" (the corpus needs at least {int(m.group(2)):,} pieces for its characters)" if m else ""
            raise TokenizerError(
                f"tokenizer.vocab_size={cfg.vocab_size} is too small for the characters of corpus {corpus} {seen}"
                f"{need}: raise tokenizer.vocab_size, or lower tokenizer.character_coverage "
                f"(now {cfg.character_coverage}) to leave the rarest characters to byte fallback"
            ) from None
        if "Vocabulary size is too high" in msg or "vocab_size" in msg:
            raise TokenizerError(
                f"corpus {corpus} {seen} cannot support tokenizer.vocab_size={cfg.vocab_size}: "
                f"{msg.split('] ', 1)[-1]} Lower tokenizer.vocab_size, or train on a larger corpus."
            ) from None
        raise TokenizerError(f"SentencePiece training on {corpus} failed: {msg.strip()}") from None
    if stats["lines"] == 0:
        raise TokenizerError(f"corpus {corpus} has no text lines after language sampling: "
                             "check tokenizer.language_weights")
    data = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=data)
    check_output(output, "tokenizer", overwrite)  # nothing took the directory while training ran
    begin_output(output, "tokenizer")
    io.write_bytes_atomic(io.join(output, MODEL_FILE), data)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
    io.write_bytes_atomic(io.join(output, "tokenizer.vocab"), vocab.encode())
    manifest_bytes = io.json_bytes(manifests[0]) if len(manifests) == 1 else io.json_bytes(manifests)
    meta = {
        "kind": "tokenizer",
        "sentencepiece_version": spm.__version__,
        "config": cfg.model_dump(mode="json"),
        "trainer_options": trainer_options(cfg),
        "corpus": corpora[0] if len(corpora) == 1 else corpora,
        "corpus_manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        **({"mix_shares": dict(zip(corpora, shares))} if len(corpora) > 1 else {}),
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "vocab_size": sp.get_piece_size(),
        "special_tokens": {k: {"piece": SPECIAL[k], "id": SPECIAL_IDS[k]} for k in SPECIAL},
        "user_defined_symbols": {s: sp.piece_to_id(s) for s in reserved_symbols(cfg)},
        "documents": stats["documents"],
        "documents_skipped_by_language_weight": stats["documents_skipped"],
        "lines_streamed": stats["lines"],
        "languages": {k.split(":", 1)[1]: n for k, n in sorted(stats.items()) if k.startswith("lang:")},
    }
    from gristmill.tokenizer.hf import export_hf  # tokenizers: only needed here

    export_hf(data, output, meta)
    io.write_json_atomic(io.join(output, "tokenizer_meta.json"), meta)
    return TrainResult(output, meta, time.time() - t0)


def model_file(path: str) -> str:
    """The SentencePiece model of a tokenizer given as its directory or as the .model file itself."""
    if path.endswith(".model") or (not io.is_remote(path) and os.path.isfile(path)):
        return path
    return io.join(path, MODEL_FILE)


def load(path: str):
    """A SentencePiece processor from a tokenizer directory or a .model file, with a clear error."""
    import sentencepiece as spm

    model_path = model_file(path)
    if not io.exists(path):
        raise TokenizerError(f"tokenizer {path} does not exist (train one with `gristmill tokenizer train`)")
    if not io.exists(model_path):
        raise TokenizerError(f"no SentencePiece model at {model_path}: pass the directory `gristmill tokenizer train` "
                             "wrote, or its tokenizer.model")
    data = io.read_bytes(model_path)
    try:
        return spm.SentencePieceProcessor(model_proto=data)
    except RuntimeError as e:
        raise TokenizerError(f"{model_path} is not a SentencePiece model ({str(e).strip()}): pass the directory "
                             "`gristmill tokenizer train` wrote, or its tokenizer.model") from None
