"""A full disk is a fault a cluster job meets (issue 27): the corpus job writing onto a small tmpfs fails with
its own exit code and one line naming the path and the free space, records it in run.json, leaves no
temporary behind, and once there is room the same command finishes the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gristmill.errors import ExitCode
from gristmill.io import TMP_MARK

REPO = Path(__file__).resolve().parents[1]
CRAWL = REPO / "sample" / "crawl" / "dolma-cc-main-2019-30.jsonl.gz"  # 2.5 MB of text: more than the disk


def _cannot_mount() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if not shutil.which("mount") or not shutil.which("umount"):
        return "mount/umount are missing"
    return None


def _gristmill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gristmill", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600, env={**os.environ, "GRISTMILL_LOG_LEVEL": "INFO"})


@pytest.mark.slow
@pytest.mark.skipif(_cannot_mount() is not None, reason=str(_cannot_mount()))
def test_a_full_disk_is_named_recorded_and_resumed_from(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "corpus"
        full = _gristmill("corpus", "--input", str(CRAWL), "--output", str(out))
        assert full.returncode == ExitCode.DISK_FULL, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith(f"gristmill corpus: disk full: no space left on the device of {out} (")
        assert "free of 600.0 KiB" in last and "run `gristmill corpus` again" in last
        assert "Traceback" not in full.stderr  # one line says it all (Beam's record of it without its traceback)
        record = json.loads((out / "run.json").read_text())
        assert (record["status"], record["exit_code"]) == ("failed", ExitCode.DISK_FULL)
        assert "DiskFullError" in record["error"]
        assert not [p for p in out.rglob("*") if TMP_MARK in p.name]  # no half-written temporary left
        assert not (out / "manifest.json").exists()

        # room made: the same command finishes the run, and what it wrote verifies
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = _gristmill("corpus", "--input", str(CRAWL), "--output", str(out))
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads((out / "run.json").read_text())["status"] == "succeeded"
        verified = _gristmill("verify", str(out))
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_recognised_however_a_runner_wrapped_it():
    import errno

    from gristmill.errors import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # Beam re-raises a worker's error as another type carrying its text
    assert is_disk_full(RuntimeError("OSError: [Errno 28] No space left on device [while running 'ReadClean']"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("writing the shard failed") from inner
    except ValueError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.ENOENT, "No such file or directory"))
    assert not is_disk_full(RuntimeError("the shard is 28 bytes short"))
