"""The order in which training reads token shards: deterministic for a seed, resumable to the exact sequence.

The shards themselves are read by :class:`gristmill.tokenizer.tokens.TokenSplit` (memory-mapped).

The training stream is one infinite sequence of sample indices: sample ``i`` is sequence
``perm_e[i mod N]`` of epoch ``e = i div N``, where ``perm_e`` is a permutation seeded by
``(seed, e)``. Optimizer step ``s`` consumes samples ``[s·G, (s+1)·G)`` (G = global batch); within it,
micro-step ``m`` of rank ``r`` takes the ``micro_batch_size`` samples starting at
``s·G + (m·world + r)·micro_batch_size``. The data position is therefore the number of samples consumed,
saved in every checkpoint: a resumed run reads exactly the samples an uninterrupted one would, and the
global batches do not depend on the number of workers (only the split of each batch does).

Masked language modelling (``model.objective: mlm``) masks on the fly, and the masks are part of the
same position: sample ``i``'s mask comes from a generator seeded by ``(seed, split, i)`` alone
(:func:`mlm_mask`), so a resumed run, or one on another number of workers, masks every sample as an
uninterrupted run does, and a sequence read again in a later epoch gets a new mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gristmill.errors import GristmillError


class DataError(GristmillError, ValueError):
    """Training data or settings that do not fit together; the message says what to fix."""


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch splits over workers and micro-steps."""

    batch_size: int  # sequences per optimizer step, all workers
    micro_batch_size: int  # sequences per forward pass on one worker
    world_size: int

    @property
    def grad_accum(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world_size)

    def check(self) -> None:
        per_round = self.micro_batch_size * self.world_size
        if self.batch_size % per_round:
            raise DataError(
                f"pretrain.batch_size {self.batch_size} is not a multiple of micro_batch_size × workers = "
                f"{self.micro_batch_size} × {self.world_size}; change one of them"
            )


class SampleStream:
    """The deterministic sample order of the training split (see the module docstring)."""

    def __init__(self, n: int, seed: int):
        if n == 0:
            raise DataError("the train split has no sequences: the corpus is smaller than one sequence")
        self.n, self.seed = n, seed
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, start: int, count: int) -> np.ndarray:
        """Sequence indices of samples [start, start + count)."""
        out = np.empty(count, dtype=np.int64)
        for k, i in enumerate(range(start, start + count)):
            out[k] = self._permutation(i // self.n)[i % self.n]
        return out


def micro_batch_start(step: int, micro: int, rank: int, plan: BatchPlan) -> int:
    """First sample index of micro-step ``micro`` of rank ``rank`` at optimizer step ``step``."""
    return step * plan.batch_size + (micro * plan.world_size + rank) * plan.micro_batch_size


def val_indices(n_val: int, rank: int, world: int, micro_batch_size: int, max_batches: int) -> list[np.ndarray]:
    """Validation micro-batches of one rank: the first ``max_batches × micro_batch_size`` sequences of val/
    (all if 0), whatever the number of workers, dealt out to the ranks in order. Every rank gets the same
    number of batches (the last ones may be shorter or empty) so collective calls stay matched."""
    limit = n_val if max_batches == 0 else min(n_val, max_batches * micro_batch_size)
    idx = np.arange(limit)
    per_round = micro_batch_size * world
    batches = []
    for start in range(0, limit, per_round):
        chunk = idx[start:start + per_round]
        batches.append(chunk[rank * micro_batch_size:(rank + 1) * micro_batch_size])
    return batches


#: the streams of :func:`mlm_mask`'s generators: training samples and validation rows never share a mask
MASK_STREAMS = {"train": 0, "val": 1}


def mlm_mask(tokens: np.ndarray, positions: np.ndarray, seed: int, split: str, mask_id: int, vocab_size: int,
             special_ids: tuple[int, ...] = (), rate: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking of rows ``tokens`` (n, T) whose data positions (sample indices) are ``positions``:
    each token not in ``special_ids`` is chosen with probability ``rate``; of those, 80 % become
    ``mask_id``, 10 % a uniformly random id below ``vocab_size``, 10 % stay. Returns (inputs, labels):
    labels hold the original id at chosen positions and -100 (not counted by the loss) elsewhere.
    Deterministic: row k depends only on (seed, split, positions[k]) and its tokens."""
    inputs, labels = tokens.copy(), np.full_like(tokens, -100)
    specials = np.asarray(special_ids, dtype=tokens.dtype)
    for k, pos in enumerate(positions):
        rng = np.random.default_rng([seed, MASK_STREAMS[split], int(pos)])
        row = tokens[k]
        u = rng.random((3, row.shape[0]))  # chosen?, which replacement, and the random id: one draw each
        chosen = (u[0] < rate) & ~np.isin(row, specials)
        labels[k, chosen] = row[chosen]
        inputs[k, chosen & (u[1] < 0.8)] = mask_id
        rand = chosen & (u[1] >= 0.8) & (u[1] < 0.9)
        inputs[k, rand] = (u[2, rand] * vocab_size).astype(tokens.dtype)
    return inputs, labels
