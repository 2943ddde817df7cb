"""A training run's directory on an object store: ``storage_path: s3://bucket/runs`` (or gs://, any store
Beam's filesystems reach). The run works in a local mirror of ``STORAGE/NAME`` and keeps the store current.

Training writes its run directory as files (checkpoints, metrics.jsonl, run.json, training.png, TensorBoard
events) and resumes by listing checkpoints and checking their sizes and checksums: on an object store each of
those is a request, and a file appended to (metrics, events) is rewritten whole. So a run works in
``CACHE/<hash of STORAGE>/NAME`` (``run_cache``; default ``$GRISTMILL_CACHE/runs`` or ``~/.cache/gristmill/runs``):

- :func:`pull`, before training, on every node (under a lock: one copier per node): what the store holds and
  the mirror lacks or holds at another size. A new node, or a run resubmitted after its disk was lost, starts
  from the newest checkpoint the store has.
- :func:`push`, by the process that writes checkpoints, after each one and when the run ends (however it
  ends): every file new or changed since the last push, a checkpoint's state file after its other files (a
  checkpoint is complete only once every file its state lists has the listed size: one cut short on the store
  is passed over by a resume), and the checkpoints pruned locally (``keep_checkpoints``) deleted from the store.

What was pushed is remembered in the mirror (``.pushed.json``: size and mtime per file), so a push sends only
what changed. Credentials are those of the environment, as for ``pretrain.data`` on a store (tokenizer/cache.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from gristmill import io
from gristmill.log import drop_known_noise
from gristmill.tokenizer.cache import default_cache_root
from gristmill.trainer.checkpoint import STATE_FILE

log = logging.getLogger("gristmill.trainer")

#: what the mirror keeps for itself (never pushed): what was pushed, and the node's copy lock
PUSHED_FILE, LOCK_FILE = ".pushed.json", ".pull.lock"
CHUNK = 1 << 22


def mirror_of(storage_path: str) -> Path:
    """The local directory standing for ``storage_path`` on this node (its runs are subdirectories, as on the
    store): ``runs/KEY`` in gristmill's cache, beside the token copies (tokenizer/cache.py)."""
    key = hashlib.sha256(storage_path.rstrip("/").encode()).hexdigest()[:16]
    return default_cache_root().parent / "runs" / key


def _pushed(local: Path) -> dict[str, list[int]]:
    try:
        return json.loads((local / PUSHED_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _remember(local: Path, pushed: dict[str, list[int]]) -> None:
    tmp = local / (PUSHED_FILE + ".tmp")
    tmp.write_text(json.dumps(pushed, sort_keys=True))
    os.replace(tmp, local / PUSHED_FILE)


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _local_files(local: Path) -> list[str]:
    """Files of the mirror to keep on the store: not the mirror's own, not a checkpoint being written."""
    out = []
    for p in sorted(local.rglob("*")):
        rel = p.relative_to(local)
        if p.is_file() and not rel.parts[0].startswith(".") and not rel.parts[0].endswith(".tmp"):
            out.append(str(rel))
    return out


def pull(remote: str, local: Path) -> int:
    """Copy into ``local`` every file under ``remote`` that it lacks or holds at another size (one process
    per node copies; the others wait on the lock). Returns how many files were copied."""
    local.mkdir(parents=True, exist_ok=True)
    drop_known_noise()  # in a Ray worker, whose logging is not gristmill's: Beam's import-time lines
    io.configure([])  # the store's client from the environment (no Beam arguments in training)
    with open(local / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = {f: m for f, m in _remote_sizes(remote).items() if not f.startswith(".")}
        pushed, copied = _pushed(local), 0
        for rel, size in sorted(stored.items()):
            dest = local / rel
            if dest.is_file() and dest.stat().st_size == size:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            with io.filesystems().open(io.join(remote, rel)) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
            os.replace(part, dest)
            pushed[rel] = _stamp(dest)  # the store has it: not to be pushed back
            copied += 1
        _remember(local, pushed)
    if copied:
        log.info("%s: %d file(s) copied from the store to %s", remote, copied, local)
    return copied


def _remote_sizes(remote: str) -> dict[str, int]:
    base = remote.rstrip("/") + "/"
    try:
        found = io.filesystems().match([base + "**"])[0].metadata_list
    except Exception:  # noqa: BLE001 - nothing there yet
        return {}
    return {m.path[len(base):]: m.size_in_bytes for m in found if m.path.startswith(base)}


def push(local: Path, remote: str) -> int:
    """Send ``local``'s new and changed files to ``remote`` (each checkpoint's state file after the rest of
    it), and delete from ``remote`` the checkpoints no longer in ``local``. Returns how many files were sent."""
    drop_known_noise()
    io.configure([])
    pushed = _pushed(local)
    files = _local_files(local)
    changed = [f for f in files if pushed.get(f) != _stamp(local / f)]
    # a checkpoint's state file last: until it is there (with every file at its listed size) it is not one
    changed.sort(key=lambda f: (Path(f).name == STATE_FILE, f))
    for rel in changed:
        stamp = _stamp(local / rel)
        with open(local / rel, "rb") as src, io.filesystems().create(io.join(remote, rel)) as out:
            shutil.copyfileobj(src, out, CHUNK)
        pushed[rel] = stamp
    here = {Path(f).parts[0] for f in files}
    gone = sorted({Path(f).parts[0] for f in pushed} - here)
    for top in gone:  # pruned locally (keep_checkpoints): not kept on the store either
        if top.startswith("checkpoint_"):
            io.remove_tree(io.join(remote, top))
    for f in [f for f in pushed if Path(f).parts[0] in gone or f not in files]:
        del pushed[f]
    _remember(local, pushed)
    return len(changed)


@contextlib.contextmanager
def mirrored(remote_run: str | None, local_run: Path, pushes: bool = True):
    """Pull before, push after (also when the body fails or is stopped; not ``pushes``: a process that is
    not the run's voice, another torchrun rank): what a run's driver wraps training in."""
    if remote_run is None:
        yield
        return
    pull(remote_run, local_run)
    log.info("run directory %s: working in %s, pushed to the store at every checkpoint", remote_run, local_run)
    try:
        yield
    finally:
        if pushes:
            try:
                push(local_run, remote_run)
            except Exception as e:  # noqa: BLE001 - the run's own error is what matters; this one is said
                log.warning("%s: could not push the run's last files to the store: %s", remote_run, e)
