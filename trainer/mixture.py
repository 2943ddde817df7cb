"""Training mixtures: several token directories read in chosen proportions (MassiveText-style).

A mixture is a list of sources, each a token directory (``gristmill tokenize`` output) with a weight —
its share of the training sequences, hence of the training tokens, since every sequence has the
same length — and an optional cap on how many times its data may be read (epochs).

The mixed stream is a function of the sample index alone, like the single-source stream of
:mod:`gristmill.trainer.data`: sample ``i`` belongs to block ``b = i div K`` at position
``p = i mod K``. Every block holds each source's fixed count (its weight × K, rounded by largest
remainder) in one deterministic order — smooth weighted round-robin, so that in *any* prefix of a
block each source is within one sample of its share. Sample ``i`` is then sample
``j = b · count_s + (rank of p among s's positions)`` of source ``s``'s own stream, a
:class:`~gristmill.trainer.data.SampleStream` seeded by ``(seed, s)``: permutation per epoch of that
source, so a source is repeated only once all of its sequences were read. The data position is still
the number of samples consumed, so resume stays exact, and the share of every source after any
number of samples is within ``1/K + 1/samples`` of its weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gristmill.trainer.data import DataError, SampleStream

#: samples per schedule block: shares are exact per block to 1/BLOCK
BLOCK = 10_000


class MixtureError(DataError):
    """A mixture that cannot be trained on as configured; the message names the source and the fix."""


@dataclass(frozen=True)
class MixtureSource:
    name: str
    weight: float
    sequences: int  # train sequences available
    max_epochs: float | None = None


def block_counts(weights: list[float], block: int = BLOCK) -> np.ndarray:
    """Samples of each source per block: weight share × block, rounded by largest remainder (sums to
    ``block``; ties go to the earlier source)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * block
    counts = np.floor(exact).astype(np.int64)
    rest = block - int(counts.sum())
    order = sorted(range(len(w)), key=lambda s: (-(exact[s] - counts[s]), s))
    for s in order[:rest]:
        counts[s] += 1
    return counts


def block_pattern(counts: np.ndarray) -> np.ndarray:
    """Source of each position in a block: smooth weighted round-robin (nginx's), deterministic;
    every prefix holds each source within one sample of its share."""
    total = int(counts.sum())
    current = np.zeros(len(counts), dtype=np.int64)
    pattern = np.empty(total, dtype=np.int32)
    for p in range(total):
        current += counts
        s = int(np.argmax(current))  # first maximum: ties go to the earlier source
        current[s] -= total
        pattern[p] = s
    return pattern


class MixedStream:
    """The deterministic sample order of a mixture (see the module docstring)."""

    def __init__(self, sources: list[MixtureSource], seed: int, block: int = BLOCK):
        check_weights(sources)
        self.sources = sources
        self.counts = block_counts([s.weight for s in sources], block)
        for src, c in zip(sources, self.counts):
            if c == 0:
                raise MixtureError(f"mixture source {src.name!r}: weight {src.weight} is below one sample in "
                                   f"{block:,}; raise it or drop the source")
            if src.sequences == 0:
                raise MixtureError(f"mixture source {src.name!r} has no train sequences")
        self.block = block
        self.pattern = block_pattern(self.counts)
        # rank of each position among its source's positions, and each source's count in every prefix
        self.rank = np.empty(block, dtype=np.int64)
        self.prefix = np.zeros((len(sources), block + 1), dtype=np.int64)
        seen = np.zeros(len(sources), dtype=np.int64)
        for p, s in enumerate(self.pattern):
            self.rank[p] = seen[s]
            seen[s] += 1
            self.prefix[:, p + 1] = seen
        self.streams = [SampleStream(src.sequences, _source_seed(seed, k)) for k, src in enumerate(sources)]

    def indices(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, sequence index within the source) of samples [start, start + count)."""
        i = np.arange(start, start + count, dtype=np.int64)
        b, p = np.divmod(i, self.block)
        src = self.pattern[p]
        local = b * self.counts[src] + self.rank[p]
        seq = np.empty(count, dtype=np.int64)
        for s in np.unique(src):
            at = np.nonzero(src == s)[0]
            # a micro-batch's samples of one source are consecutive in that source's stream
            first, n = int(local[at[0]]), int(local[at[-1]] - local[at[0]] + 1)
            seq[at] = self.streams[s].indices(first, n)[local[at] - first]
        return src.astype(np.int64), seq

    def samples_used(self, total: int) -> np.ndarray:
        """Samples each source contributes to the first ``total`` samples of the stream."""
        b, p = divmod(total, self.block)
        return b * self.counts + self.prefix[:, p]


def _source_seed(seed: int, k: int) -> int:
    # distinct, stable stream per source: SampleStream seeds numpy with [seed, epoch]; fold k in
    return seed * 1_000_003 + k


def check_weights(sources: list[MixtureSource]) -> None:
    if not sources:
        raise MixtureError("the mixture has no sources")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise MixtureError(f"mixture source names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    for s in sources:
        if not math.isfinite(s.weight) or s.weight < 0:
            raise MixtureError(f"mixture source {s.name!r}: weight {s.weight} must be a number ≥ 0")
        if s.max_epochs is not None and not s.max_epochs > 0:
            raise MixtureError(f"mixture source {s.name!r}: max_epochs {s.max_epochs} must be > 0")
    if sum(s.weight for s in sources) <= 0:
        raise MixtureError("every mixture weight is 0: give at least one source a positive weight")


def plan(stream: MixedStream, total_samples: int, seq_len: int) -> list[dict]:
    """MassiveText's table for a run of ``total_samples`` samples: per source its weight, tokens
    available, tokens used, epochs and the share it gets. Raises :class:`MixtureError` when a source
    would be read more often than its epoch cap allows — before any training."""
    used = stream.samples_used(total_samples)
    total_weight = sum(s.weight for s in stream.sources)
    rows, over = [], []
    for src, n in zip(stream.sources, used):
        epochs = int(n) / src.sequences
        rows.append({"source": src.name, "weight": round(src.weight / total_weight, 6),
                     "tokens_available": src.sequences * seq_len, "tokens_used": int(n) * seq_len,
                     "epochs": round(epochs, 4), "max_epochs": src.max_epochs,
                     "share": round(int(n) / total_samples, 6) if total_samples else 0.0})
        if src.max_epochs is not None and epochs > src.max_epochs + 1e-12:
            over.append(f"{src.name!r} would be read {epochs:.2f} times (max_epochs {src.max_epochs})")
    if over:
        raise MixtureError(f"the token budget ({total_samples:,} sequences) exceeds the epoch cap of "
                           f"{', '.join(over)}: lower its weight, raise max_epochs, or train fewer steps")
    return rows


def format_plan(rows: list[dict]) -> str:
    head = f"{'source':<20} {'weight':>7} {'tokens available':>17} {'tokens used':>13} {'epochs':>7} {'share':>7}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['source']:<20} {r['weight']:>7.3f} {r['tokens_available']:>17,} {r['tokens_used']:>13,} "
                     f"{r['epochs']:>7.2f} {r['share']:>7.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The token directories of a mixture, as the training loop reads them
# ---------------------------------------------------------------------------------------------


class MixedSplit:
    """The train (``weights`` given) or val split of several token directories.

    Train: :meth:`stream` gives the mixed sample order; its indices are (source, sequence) pairs and
    :meth:`rows` reads them. Val: the sources' val splits one after the other (1-D indices), so every
    source's held-out text is in the validation loss.
    """

    def __init__(self, splits: list, names: list[str], weights: list[float] | None = None,
                 max_epochs: list[float | None] | None = None):
        self.splits, self.names = splits, names
        self.seq_len = splits[0].seq_len
        self.offsets = np.cumsum([0] + [len(s) for s in splits])
        self.sources = None
        if weights is not None:
            caps = max_epochs or [None] * len(splits)
            self.sources = [MixtureSource(n, w, len(s), c) for n, w, s, c in zip(names, weights, splits, caps)]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def stream(self, seed: int) -> _PairStream:
        if self.sources is None:
            raise MixtureError("a validation split has no mixed stream")
        return _PairStream(MixedStream(self.sources, seed))

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Sequences at (source, sequence) pairs (an (n, 2) array), or at positions of the
        concatenated splits (1-D)."""
        indices = np.asarray(indices)
        if indices.ndim == 2:
            src, seq = indices[:, 0], indices[:, 1]
        else:
            src = np.searchsorted(self.offsets, indices, side="right") - 1
            seq = indices - self.offsets[src]
        out = np.empty((len(indices), self.seq_len + 1), dtype=np.int64)
        for s in np.unique(src):
            at = np.nonzero(src == s)[0]
            out[at] = self.splits[s].rows(seq[at])
        return out


class _PairStream:
    """A :class:`MixedStream` with the interface of :class:`~gristmill.trainer.data.SampleStream`:
    ``indices(start, count)`` → an (count, 2) array of (source, sequence)."""

    def __init__(self, mixed: MixedStream):
        self.mixed = mixed

    def indices(self, start: int, count: int) -> np.ndarray:
        src, seq = self.mixed.indices(start, count)
        return np.stack([src, seq], axis=1)


def check_compatible(manifests: dict[str, dict]) -> None:
    """Sources must share the tokenizer, the sequence length and the token type: their rows are
    batched together and read by one model."""
    first_name, first = next(iter(manifests.items()))
    for key, what in (("tokenizer_model_sha256", "tokenizer"), ("seq_len", "seq_len"), ("vocab_size", "vocab_size"),
                      ("dtype", "token type")):
        for name, m in manifests.items():
            if m.get(key) != first.get(key):
                raise MixtureError(
                    f"mixture sources {first_name!r} and {name!r} differ in {what} ({first.get(key)} vs {m.get(key)}): "
                    "tokenize every source with the same tokenizer and --seq-len")
