"""Token shards on an object store (``s3://``, ``gs://``, any Beam filesystem) → a local copy per node, memory-mapped
from there: training reads rows at random positions, which an object store serves one request at a time.

The copy is made once per node: the first process (a Ray Train worker, a torchrun rank) takes a file lock in the
cache directory and copies; the others wait on the lock and find it done. Each shard is checked against the
SHA-256 in the token manifest as it streams in, written under a temporary name and renamed: a copy interrupted by
a kill resumes with the shards still missing or damaged, and the manifest, written last, says the copy is
complete. The cache directory is keyed by the URI and the manifest's bytes, so a re-tokenized directory at the
same URI is copied afresh. Credentials come as the object store's client takes them on every node (for S3 the
AWS_* environment variables or an instance role: ``AWS_ENDPOINT_URL`` for an S3-compatible server); nothing
about them is written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from gristmill import io
from gristmill.log import drop_known_noise
from gristmill.tokenizer.tokens import TokenDataError

log = logging.getLogger("gristmill.tokenizer")

CHUNK = 8 << 20


def default_cache_root() -> Path:
    """$GRISTMILL_CACHE, else $XDG_CACHE_HOME/gristmill, else ~/.cache/gristmill; token copies under tokens/."""
    root = os.environ.get("GRISTMILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gristmill")
    return Path(root) / "tokens"


def read_remote_manifest(uri: str) -> tuple[dict, bytes]:
    """The token manifest of a directory on an object store, and its bytes."""
    drop_known_noise()  # in a Ray worker, whose logging is not gristmill's: Beam's import-time lines
    io.configure([])  # the filesystem's client from the environment (no Beam arguments in training)
    path = io.join(uri, "manifest.json")
    try:
        data = io.read_bytes(path)
    except Exception as e:  # noqa: BLE001 - Beam's filesystems raise their own types
        raise TokenDataError(f"{path} could not be read ({type(e).__name__}: {e}): pretrain.data must be a "
                             "directory written by `gristmill tokenize`, reachable with this node's credentials "
                             "(for S3: AWS_* environment variables or an instance role)") from None
    manifest = json.loads(data)
    if manifest.get("kind") != "tokens":
        raise TokenDataError(f"{path} is not a token manifest (kind={manifest.get('kind')!r})")
    return manifest, data


def local_tokens(uri: str, cache_root: str | Path | None = None) -> Path:
    """``uri`` itself when it is a local path; else its local copy (made or completed here, verified)."""
    if not io.is_remote(uri):
        return Path(uri)
    manifest, data = read_remote_manifest(uri)
    key = hashlib.sha256(uri.encode() + b"\0" + data).hexdigest()[:16]
    root = Path(cache_root) if cache_root else default_cache_root()
    local = root / key
    local.mkdir(parents=True, exist_ok=True)
    with open(local / ".lock", "w") as lock:
        waited = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)  # one copier per node; the others wait here
        if (local / "manifest.json").is_file():
            if time.monotonic() - waited > 1:
                log.info("%s: copied by another process on this node to %s", uri, local)
            return local
        shards = [s for split in manifest["splits"].values() for s in split["shards"]]
        copied, nbytes, t0 = 0, 0, time.monotonic()
        for shard in shards:
            dest = local / shard["path"]
            if dest.is_file() and _sha256(dest) == shard.get("sha256"):
                continue  # an earlier, interrupted copy got this one
            nbytes += _copy(io.join(uri, shard["path"]), dest, shard.get("sha256"))
            copied += 1
        tmp = local / "manifest.json.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, local / "manifest.json")  # last: the copy is complete
        log.info("%s: %d of %d shards copied to %s (%.1f MB, %.1f s)", uri, copied, len(shards), local,
                 nbytes / 1e6, time.monotonic() - t0)
    return local


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy(src: str, dest: Path, sha256: str | None) -> int:
    """Stream ``src`` to ``dest`` (a temporary name, then renamed), checking its SHA-256; returns its size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    h, n = hashlib.sha256(), 0
    with io.filesystems().open(src) as f, open(tmp, "wb") as out:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
    if sha256 and h.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise TokenDataError(f"{src}: SHA-256 {h.hexdigest()[:12]}… is not the manifest's {sha256[:12]}…: the shard "
                             "changed or was damaged on the store; tokenize again")
    os.replace(tmp, dest)
    return n


def token_manifest(path: str) -> dict:
    """The token manifest of a local directory or one on an object store."""
    from gristmill.tokenizer.tokens import read_token_manifest

    return read_remote_manifest(path)[0] if io.is_remote(path) else read_token_manifest(path)
