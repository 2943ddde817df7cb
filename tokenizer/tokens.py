"""The token-shard format: writer and reader in one place.

A token directory (written by ``gristmill tokenize``, read by the trainer)::

    OUTPUT/train/part-NNNNN.arrow, OUTPUT/val/part-NNNNN.arrow, OUTPUT/manifest.json

Each shard is an Arrow IPC file with one fixed-size-list column ``tokens`` of uint16 (vocabularies
up to 65,536) or uint32; a row is one training sequence of ``seq_len + 1`` tokens (inputs and
targets shifted by one). Memory-mapped, a shard is a zero-copy ``(n, seq_len + 1)`` numpy array.
``manifest.json`` (``kind: tokens``) gives ``seq_len``, ``vocab_size``, ``dtype``, the tokenizer, and
per split its shards (path, sequences, sha256) and token counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from gristmill import io
from gristmill.documents import unlisted_files
from gristmill.errors import GristmillError

SPLITS = ("train", "val")


class TokenDataError(GristmillError, ValueError):
    """A token directory that is missing, empty or not what its reader expects."""


# --- writing ------------------------------------------------------------------------------------


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65_536 else np.uint32


def pack(docs: list[tuple[str, np.ndarray]], seq_len: int) -> tuple[np.ndarray, int]:
    """Documents (id, tokens) → (sequences of seq_len + 1 tokens in id order, tokens dropped)."""
    docs = sorted(docs, key=lambda d: d[0])
    stream = np.concatenate([t for _, t in docs]) if docs else np.empty(0, dtype=np.uint32)
    width = seq_len + 1
    n = stream.size // width
    return stream[: n * width].reshape(n, width), int(stream.size - n * width)


def sequences_table(seqs: np.ndarray, dtype) -> pa.Table:
    width = seqs.shape[1] if seqs.ndim == 2 else 0
    flat = pa.array(seqs.astype(dtype, copy=False).reshape(-1))
    return pa.table({"tokens": pa.FixedSizeListArray.from_arrays(flat, width)})


def shard_bytes(seqs: np.ndarray, dtype) -> bytes:
    """One token shard's file contents (Arrow IPC file format)."""
    return io.table_bytes(sequences_table(seqs, np.dtype(dtype)), "file")


# --- reading ------------------------------------------------------------------------------------


def open_sequences(path: str | Path) -> np.ndarray:
    """A token shard as an (n, seq_len + 1) array over the memory-mapped file (no copy)."""
    col = io.read_table(str(path)).column("tokens")
    width = col.type.list_size
    arrays = [chunk.values.to_numpy(zero_copy_only=True).reshape(-1, width) for chunk in col.chunks]
    if not arrays:
        return np.zeros((0, width), dtype=np.uint16)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def read_token_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise TokenDataError(f"{path} not found: pretrain.data must be a directory written by `gristmill tokenize`")
    m = json.loads(path.read_text())
    if m.get("kind") != "tokens":
        raise TokenDataError(f"{path} is not a token manifest (kind={m.get('kind')!r}); run `gristmill tokenize` first")
    return m


class TokenSplit:
    """All sequences of one split (train/ or val/), in manifest order, each shard memory-mapped."""

    def __init__(self, data_dir: str | Path, split: str, manifest: dict | None = None):
        self.dir = Path(data_dir)
        self.manifest = manifest or read_token_manifest(data_dir)
        if split not in self.manifest["splits"]:
            raise TokenDataError(f"{self.dir}: no split {split!r} in the manifest")
        shards = self.manifest["splits"][split]["shards"]
        self.arrays = [open_sequences(self.dir / s["path"]) for s in shards]
        for s, a in zip(shards, self.arrays):
            if len(a) != s["sequences"]:
                raise TokenDataError(f"{self.dir / s['path']}: {len(a)} sequences, the manifest says {s['sequences']}")
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


def verify_tokens(data_dir: str | Path) -> list[str]:
    """Re-check a token directory against its manifest: every shard present with its checksum,
    sequence count and width. Returns the problems found."""
    import hashlib

    manifest = read_token_manifest(data_dir)
    problems = []
    width = int(manifest["seq_len"]) + 1
    for split, info in manifest["splits"].items():
        sequences = 0
        for entry in info["shards"]:
            path = Path(data_dir) / entry["path"]
            if not path.is_file():
                problems.append(f"{entry['path']}: missing")
                continue
            if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
                problems.append(f"{entry['path']}: checksum differs from the manifest's "
                                "(the file was changed or damaged)")
                continue
            arr = open_sequences(path)
            if arr.shape[1] != width or len(arr) != entry["sequences"]:
                problems.append(f"{entry['path']}: {len(arr)} sequences of {arr.shape[1]} tokens, the manifest says "
                                f"{entry['sequences']} of {width}")
            sequences += len(arr)
        if sequences != info["sequences"]:
            problems.append(f"{split}: {sequences} sequences in the shards, the manifest says {info['sequences']}")
    listed = {e["path"] for info in manifest["splits"].values() for e in info["shards"]}
    return problems + unlisted_files(str(data_dir), listed)
