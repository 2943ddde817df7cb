"""A model-based quality classifier, DCLM's recipe: a fastText-style linear classifier on word unigrams
and bigrams, high-quality text (books, speeches, instructions) against crawl text.

Why not the ``fasttext`` package to train: its training wheels and ``fasttext-predict`` (gristmill's
lid.176 engine) install the same module, so only one can live in an environment. The classifier is
the same model either way — the mean of word and hashed-bigram embeddings, a linear layer, softmax —
so gristmill trains it with PyTorch (deterministic for a seed) and writes it in fastText's own binary
format (version 12): ``fasttext.load_model(path).predict(text)`` loads and scores it, in C++, with the
package already installed, and so does any other fastText tool. :func:`features` reproduces fastText's
tokenisation and bigram hashing exactly (tested against ``predict``'s probabilities).

Pure logic, no Beam; the CLI is ``gristmill quality train`` (gristmill/cli.py).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import math
import re
import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gristmill.errors import GristmillError

FASTTEXT_MAGIC = 793712314
FASTTEXT_VERSION = 12
EOS = "</s>"
LABEL_PREFIX = "__label__"
POSITIVE, NEGATIVE = "hq", "cc"  # DCLM's label names: high quality, common crawl
# fastText splits on exactly these bytes (Dictionary::readWord), not on every Unicode space
_SPLIT = re.compile(r"[ \n\r\t\v\f\x00]+")
# fastText's args enums (args.h)
_LOSS_SOFTMAX, _MODEL_SUP = 3, 3


class QualityModelError(GristmillError, ValueError):
    """Training data or a model file that cannot be used; the message names the file or the fix."""


@dataclass(frozen=True)
class TrainParams:
    dim: int = 16
    bucket: int = 65_536  # hashed bigram rows (fastText's default 2M makes a 2 GB model at dim 256)
    word_ngrams: int = 2
    min_count: int = 3
    epochs: int = 5
    lr: float = 0.5
    batch_size: int = 16
    max_words: int = 1_000  # words of a document used (its start), as DCLM truncates
    holdout: float = 0.1
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Text → fastText tokens and feature rows
# ---------------------------------------------------------------------------------------------


def prepare(text: str, max_words: int) -> str:
    """One line, lower-cased, at most ``max_words`` words: what is scored (and trained on)."""
    words = _SPLIT.split(text.lower().strip())
    return " ".join(w for w in words[:max_words] if w)


def tokens(line: str) -> list[str]:
    """fastText's tokens of a one-line text, with the end-of-line token its ``predict`` adds."""
    return [t for t in _SPLIT.split(line) if t] + [EOS]


def fnv1a(token: str) -> int:
    """fastText's ``Dictionary::hash``: 32-bit FNV-1a over the UTF-8 bytes, each byte sign-extended
    (``int8_t``) first, as the C++ code does."""
    h = 2166136261
    for b in token.encode("utf-8"):
        h ^= b | 0xFFFFFF00 if b >= 128 else b
        h = (h * 16777619) & 0xFFFFFFFF
    return h


class Vocabulary:
    """Words (count ≥ min_count, most frequent first, then by text) and the two labels."""

    def __init__(self, counts: Counter, min_count: int, labels: list[str], label_counts: list[int]):
        kept = [(w, c) for w, c in counts.items() if c >= min_count or w == EOS]
        kept.sort(key=lambda wc: (-wc[1], wc[0]))
        self.words = [w for w, _ in kept]
        self.counts = [c for _, c in kept]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.labels = labels
        self.label_counts = label_counts
        self._hash: dict[str, int] = {}

    def hash(self, token: str) -> int:
        h = self._hash.get(token)
        if h is None:
            h = self._hash[token] = fnv1a(token)
        return h

    def features(self, line: str, bucket: int, word_ngrams: int) -> list[int]:
        """Input rows of a line, as ``Dictionary::getLine`` + ``addWordNgrams`` build them: known
        words, then for each word every following n-gram (n ≤ word_ngrams) hashed into
        ``nwords + bucket`` rows. Unknown words add no row of their own but take part in n-grams."""
        toks = tokens(line)
        rows = [self.index[t] for t in toks if t in self.index]
        # C++ keeps the hashes as int32 and widens them to uint64: sign extension
        hs = [h - (1 << 32) if h >= 1 << 31 else h for h in (self.hash(t) for t in toks)]
        nwords, mask = len(self.words), (1 << 64) - 1
        for i in range(len(hs)):
            h = hs[i] & mask
            for j in range(i + 1, min(len(hs), i + word_ngrams)):
                h = (h * 116049371 + hs[j]) & mask
                rows.append(nwords + h % bucket)
        return rows


def build_vocabulary(lines: Iterable[str], labels: list[int], min_count: int) -> Vocabulary:
    counts: Counter = Counter()
    for line in lines:
        counts.update(tokens(line))
    label_counts = [sum(1 for y in labels if y == k) for k in (0, 1)]
    return Vocabulary(counts, min_count, [LABEL_PREFIX + POSITIVE, LABEL_PREFIX + NEGATIVE], label_counts)


# ---------------------------------------------------------------------------------------------
# fastText's binary format (args, dictionary, input matrix, output matrix)
# ---------------------------------------------------------------------------------------------


def write_fasttext(path: str | Path, vocab: Vocabulary, input_matrix: np.ndarray, output_matrix: np.ndarray,
                   params: TrainParams) -> None:
    """A supervised fastText model file: ``FastText::saveModel`` field by field (little-endian, the
    layout every fastText build reads)."""
    nwords, nlabels = len(vocab.words), len(vocab.labels)
    if input_matrix.shape != (nwords + params.bucket, params.dim) or output_matrix.shape != (nlabels, params.dim):
        raise ValueError("matrix shapes do not match the vocabulary and parameters")
    out = bytearray()
    out += struct.pack("<ii", FASTTEXT_MAGIC, FASTTEXT_VERSION)
    # Args::save: dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate t
    out += struct.pack("<12id", params.dim, 5, params.epochs, params.min_count, 5, params.word_ngrams,
                       _LOSS_SOFTMAX, _MODEL_SUP, params.bucket, 0, 0, 100, 1e-4)
    # Dictionary::save: size nwords nlabels ntokens pruneidx_size, entries (word\0, count, type)
    entries = [(w, c, 0) for w, c in zip(vocab.words, vocab.counts)]
    entries += [(lab, c, 1) for lab, c in zip(vocab.labels, vocab.label_counts)]
    out += struct.pack("<iiiqq", len(entries), nwords, nlabels, sum(vocab.counts), -1)
    for word, count, kind in entries:
        out += word.encode("utf-8") + b"\0" + struct.pack("<qb", count, kind)
    for matrix in (input_matrix, output_matrix):  # quant flag, then DenseMatrix::save: m n data
        data = np.ascontiguousarray(matrix, dtype="<f4")
        out += struct.pack("<?qq", False, *data.shape) + data.tobytes()
    tmp = Path(f"{path}.tmp")  # a killed run leaves no half-written model under the final name
    tmp.write_bytes(bytes(out))
    tmp.replace(path)


def read_fasttext_header(path: str | Path) -> dict:
    """Args and labels of a fastText model file, without loading its matrices: enough to check that
    a file is a supervised fastText model with gristmill's two labels."""
    try:
        with open(path, "rb") as f:
            head = f.read(8 + 12 * 4 + 8 + 4 * 3 + 16)
            if len(head) < 8 or struct.unpack("<ii", head[:8]) != (FASTTEXT_MAGIC, FASTTEXT_VERSION):
                raise QualityModelError(f"{path} is not a fastText model file (version {FASTTEXT_VERSION})")
            args = struct.unpack("<12i", head[8:56])
            size, nwords, nlabels = struct.unpack("<iii", head[64:76])
            f.seek(92)
            labels, buf, entry = [], b"", 0
            while entry < size:  # entries are short: read on until the labels (the last ones)
                chunk = f.read(1 << 20)
                if not chunk:
                    raise QualityModelError(f"{path} is truncated (its dictionary ends early)")
                buf += chunk
                while entry < size:
                    end = buf.find(b"\0")
                    if end < 0 or len(buf) < end + 10:
                        break
                    if entry >= nwords:
                        labels.append(buf[:end].decode("utf-8", "replace"))
                    buf, entry = buf[end + 10:], entry + 1
    except OSError as e:
        raise QualityModelError(f"cannot read the quality model {path}: {e.strerror or e}") from e
    keys = ("dim", "ws", "epoch", "min_count", "neg", "word_ngrams", "loss", "model", "bucket", "minn", "maxn",
            "lr_update_rate")
    return {**dict(zip(keys, args)), "nwords": nwords, "labels": labels, "supervised": args[7] == _MODEL_SUP}


# ---------------------------------------------------------------------------------------------
# Training data
# ---------------------------------------------------------------------------------------------


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _record_text(record: dict) -> str:
    text = record.get("text")
    if isinstance(text, str):
        return text
    # instruction data (GSM8K, self-instruct, OpenAssistant's messages): every string, in order
    return "\n".join(_strings(record))


def _text_chunks(text: str, words_per_doc: int) -> Iterator[str]:
    """A plain-text book cut into documents of whole paragraphs, about ``words_per_doc`` words each."""
    chunk: list[str] = []
    n = 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        chunk.append(para)
        n += len(para.split())
        if n >= words_per_doc:
            yield "\n\n".join(chunk)
            chunk, n = [], 0
    if chunk:
        yield "\n\n".join(chunk)


def read_documents(path: str, words_per_doc: int = 300) -> Iterator[str]:
    """Texts of one input: JSONL(.gz) records (``text``, else every string field), a JSON array of such
    records, corpus shards (.arrow / .parquet: the ``text`` column) or plain text (.txt, cut into
    paragraph groups)."""
    name = path.lower()
    try:
        if name.endswith((".arrow", ".parquet")):
            import pyarrow.parquet as pq

            from gristmill import io

            table = pq.read_table(path, columns=["text"]) if name.endswith(".parquet") else io.read_table(path)
            yield from (t for t in table.column("text").to_pylist() if t)
            return
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            if name.endswith((".jsonl", ".jsonl.gz")):
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise QualityModelError(f"{path}:{i}: not JSON ({e.msg})") from e
                        if isinstance(record, dict):
                            yield _record_text(record)
            elif name.endswith((".json", ".json.gz")):
                records = json.load(f)
                for record in records if isinstance(records, list) else []:
                    if isinstance(record, dict):
                        yield _record_text(record)
            else:
                yield from _text_chunks(f.read(), words_per_doc)
    except OSError as e:
        raise QualityModelError(f"cannot read {path}: {e.strerror or e}") from e


def expand_inputs(patterns: list[str], what: str) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        found = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not found:
            raise QualityModelError(f"--{what} {pattern}: no file matches")
        paths += [p for p in found if p not in paths]
    return paths


def is_holdout(line: str, seed: int, share: float) -> bool:
    """A document's split from its text and the seed alone: the same whatever the input order."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}\0{line}".encode(), digest_size=8).digest(), "little")
    return h / 2**64 < share


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def metrics(p_positive: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    pred = p_positive >= threshold
    tp = int((pred & (labels == 1)).sum())
    fp = int((pred & (labels == 0)).sum())
    fn = int((~pred & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"documents": int(len(labels)), "positives": int(labels.sum()),
            "accuracy": round(float((pred == (labels == 1)).mean()), 4) if len(labels) else 0.0,
            "precision": round(precision, 4), "recall": round(recall, 4),
            "auc": round(roc_auc(p_positive, labels), 4)}


@dataclass
class TrainedModel:
    vocab: Vocabulary
    input_matrix: np.ndarray
    output_matrix: np.ndarray
    params: TrainParams
    losses: list[float] = field(default_factory=list)

    def positive_probability(self, line: str) -> float:
        """P(hq) for a prepared line, as fastText's predict computes it (0.5 when nothing is known)."""
        rows = self.vocab.features(line, self.params.bucket, self.params.word_ngrams)
        if not rows:
            return 0.5
        hidden = self.input_matrix[rows].mean(axis=0)
        logits = self.output_matrix @ hidden
        e = np.exp(logits - logits.max())
        return float(e[0] / e.sum())


def train(lines: list[str], labels: list[int], params: TrainParams, progress=None) -> TrainedModel:
    """Labels: 1 = positive (hq), 0 = negative (cc). Mini-batch SGD with fastText's linearly decaying
    learning rate and its initialisation (input uniform ±1/dim, output zero); one thread, so the result
    depends on the seed only."""
    import torch

    vocab = build_vocabulary(lines, labels, params.min_count)
    rows = [vocab.features(line, params.bucket, params.word_ngrams) for line in lines]
    usable = [i for i, r in enumerate(rows) if r]
    nrows = len(vocab.words) + params.bucket
    gen = torch.Generator().manual_seed(params.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # summation order fixed: the same model for the same seed
    try:
        emb = torch.nn.EmbeddingBag(nrows, params.dim, mode="mean", sparse=True)
        with torch.no_grad():
            emb.weight.uniform_(-1.0 / params.dim, 1.0 / params.dim, generator=gen)
        out = torch.nn.Linear(params.dim, 2, bias=False)
        torch.nn.init.zeros_(out.weight)
        opt = torch.optim.SGD([*emb.parameters(), *out.parameters()], lr=params.lr)
        # label index 0 = hq (written first), 1 = cc
        target = torch.tensor([0 if labels[i] == 1 else 1 for i in usable])
        # classes weighted to count alike: curated text is often far scarcer (or far more) than crawl
        n_class = torch.bincount(target, minlength=2).clamp(min=1).double()
        weight = (len(usable) / (2 * n_class)).float()
        steps = params.epochs * math.ceil(len(usable) / params.batch_size)
        step, losses = 0, []
        for epoch in range(params.epochs):
            order = torch.randperm(len(usable), generator=gen).tolist()
            total, seen = 0.0, 0
            for b in range(0, len(order), params.batch_size):
                batch = order[b:b + params.batch_size]
                flat = [r for k in batch for r in rows[usable[k]]]
                offsets = np.cumsum([0] + [len(rows[usable[k]]) for k in batch[:-1]])
                for g in opt.param_groups:
                    g["lr"] = params.lr * (1 - step / steps)
                logits = out(emb(torch.tensor(flat), torch.tensor(offsets)))
                # summed, not averaged: each example moves its rows at the full rate, as fastText's
                # per-example updates do (the mean over a document's rows is EmbeddingBag's, as fastText's)
                loss = torch.nn.functional.cross_entropy(logits, target[batch], weight=weight, reduction="sum")
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
                seen += len(batch)
                step += 1
            losses.append(round(total / max(seen, 1), 5))
            if progress:
                progress(epoch + 1, params.epochs, losses[-1])
    finally:
        torch.set_num_threads(threads)
    return TrainedModel(vocab, emb.weight.detach().numpy().copy(), out.weight.detach().numpy().copy(), params,
                        losses)


def train_from_files(positive: list[str], negative: list[str], output: str | Path, params: TrainParams,
                     progress=None) -> dict:
    """Read, split, train, evaluate on the held-out split, and write OUTPUT/model.bin,
    OUTPUT/metadata.json and OUTPUT/report.md. Returns the metadata."""
    from gristmill import __version__

    if not 0 < params.holdout < 1:
        raise QualityModelError(f"holdout must be between 0 and 1 (exclusive), not {params.holdout}")
    data: dict[int, list[str]] = {1: [], 0: []}
    inputs = []
    for label, what, paths in ((1, "positive", positive), (0, "negative", negative)):
        for path in expand_inputs(paths, what):
            before = len(data[label])
            seen = set(data[label])
            for text in read_documents(path):
                line = prepare(text, params.max_words)
                if line and line not in seen:  # a repeated document would sit on both sides of the split
                    seen.add(line)
                    data[label].append(line)
            inputs.append({"path": path, "label": POSITIVE if label else NEGATIVE,
                           "documents": len(data[label]) - before, "sha256": file_sha256(path)})
    for label, what in ((1, "positive"), (0, "negative")):
        if not data[label]:
            raise QualityModelError(f"the {what} inputs hold no text: a classifier needs documents of both classes")
    split = {k: ([x for x in v if not is_holdout(x, params.seed, params.holdout)],
                 [x for x in v if is_holdout(x, params.seed, params.holdout)]) for k, v in data.items()}
    for label, what in ((1, "positive"), (0, "negative")):
        tr, ho = split[label]
        if len(tr) < 2 or len(ho) < 1:
            raise QualityModelError(
                f"too few {what} documents for a held-out split ({len(data[label])}: {len(tr)} to train, {len(ho)} "
                f"held out at holdout={params.holdout}); give more data or a larger --holdout")
    train_lines = split[1][0] + split[0][0]
    train_labels = [1] * len(split[1][0]) + [0] * len(split[0][0])
    model = train(train_lines, train_labels, params, progress)
    ho_lines = split[1][1] + split[0][1]
    ho_labels = np.array([1] * len(split[1][1]) + [0] * len(split[0][1]))
    p = np.array([model.positive_probability(x) for x in ho_lines])
    tr_p = np.array([model.positive_probability(x) for x in train_lines])
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    write_fasttext(out / "model.bin", model.vocab, model.input_matrix, model.output_matrix, params)
    meta = {
        "format": "fastText supervised model, version 12 (load with fasttext.load_model)",
        "labels": {"positive": LABEL_PREFIX + POSITIVE, "negative": LABEL_PREFIX + NEGATIVE},
        "score": "P(__label__hq) of the document's first max_words words, lower-cased, on one line",
        "params": asdict(params),
        "inputs": inputs,
        "counts": {"positive": len(data[1]), "negative": len(data[0]), "train": len(train_lines),
                   "holdout": len(ho_lines), "vocabulary": len(model.vocab.words)},
        "train_loss_per_epoch": model.losses,
        "train": metrics(tr_p, np.array(train_labels)),
        "holdout": metrics(p, ho_labels),
        "model_sha256": file_sha256(str(out / "model.bin")),
        "gristmill_version": __version__,
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(report(meta))
    return meta


def report(meta: dict) -> str:
    ho, c = meta["holdout"], meta["counts"]
    lines = [
        "# Quality classifier", "",
        f"fastText-format linear classifier on word uni+bigrams: `{meta['labels']['positive']}` (high quality) "
        f"against `{meta['labels']['negative']}` (crawl).", "",
        f"- documents: {c['positive']:,} positive, {c['negative']:,} negative; {c['train']:,} to train, "
        f"{c['holdout']:,} held out; vocabulary {c['vocabulary']:,} words",
        f"- held out: precision {ho['precision']:.3f}, recall {ho['recall']:.3f}, accuracy {ho['accuracy']:.3f}, "
        f"ROC AUC {ho['auc']:.3f} (threshold 0.5)",
        f"- training loss per epoch: {', '.join(str(x) for x in meta['train_loss_per_epoch'])}",
        "", "## Inputs", "",
        *(f"- `{i['path']}` ({i['label']}): {i['documents']:,} documents" for i in meta["inputs"]),
        "", "## Parameters", "", *(f"- {k}: {v}" for k, v in meta["params"].items()), "",
    ]
    return "\n".join(lines)


def file_sha256(path: str) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
