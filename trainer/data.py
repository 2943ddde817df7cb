"""Token shards → batches: memory-mapped, deterministic for a seed, resumable to the exact sequence.

The training stream is one infinite sequence of sample indices: sample ``i`` is sequence
``perm_e[i mod N]`` of epoch ``e = i div N``, where ``perm_e`` is a permutation seeded by
``(seed, e)``. Optimizer step ``s`` consumes samples ``[s·G, (s+1)·G)`` (G = global batch); within it,
micro-step ``m`` of rank ``r`` takes the ``micro_batch_size`` samples starting at
``s·G + (m·world + r)·micro_batch_size``. The data position is therefore the number of samples consumed,
saved in every checkpoint: a resumed run reads exactly the samples an uninterrupted one would, and the
global batches do not depend on the number of workers (only the split of each batch does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa


class DataError(ValueError):
    """Token directory missing, empty or not what the trainer expects; the message says what to fix."""


def open_sequences(path: str | Path) -> np.ndarray:
    """A token shard as an (n, seq_len + 1) array over the memory-mapped file (no copy)."""
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    col = table.column("tokens")
    width = col.type.list_size
    arrays = [chunk.values.to_numpy(zero_copy_only=True).reshape(-1, width) for chunk in col.chunks]
    if not arrays:
        return np.zeros((0, width), dtype=np.uint16)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def read_token_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path} not found: pretrain.data must be a directory written by `gristmill tokenize`")
    m = json.loads(path.read_text())
    if m.get("kind") != "tokens":
        raise DataError(f"{path} is not a token manifest (kind={m.get('kind')!r}); run `gristmill tokenize` first")
    return m


class TokenSplit:
    """All sequences of one split (train/ or val/), in manifest order, each shard memory-mapped."""

    def __init__(self, data_dir: str | Path, split: str, manifest: dict | None = None):
        self.dir = Path(data_dir)
        self.manifest = manifest or read_token_manifest(data_dir)
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.dir}: no split {split!r} in the manifest")
        shards = self.manifest["splits"][split]["shards"]
        self.arrays = [open_sequences(self.dir / s["path"]) for s in shards]
        for s, a in zip(shards, self.arrays):
            if len(a) != s["sequences"]:
                raise DataError(f"{self.dir / s['path']}: {len(a)} sequences, the manifest says {s['sequences']}")
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.seq_len = int(self.manifest["seq_len"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Sequences at global indices → an (n, seq_len + 1) int64 array (a copy; the shards stay mapped)."""
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        out = np.empty((len(indices), self.seq_len + 1), dtype=np.int64)
        for k, (s, i) in enumerate(zip(shard, indices)):
            out[k] = self.arrays[s][i - self.offsets[s]]
        return out


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
