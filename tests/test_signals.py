"""Signals as a scheduler and a terminal send them: SIGTERM to the run's process (systemd, Airflow,
Kubernetes), SIGINT to its whole process group (Ctrl-C). The run stops: it exits 143 / 130, run.json says
interrupted, temporaries are gone but the resumable work is kept, the lock is free, no process of it is left,
and the same command again resumes."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gristmill.locks import LOCK_FILE

from .conftest import DEMO_CONFIG, GRISTMILL, cli_env, group_left_behind, run_cli, signal_stopped

pytestmark = pytest.mark.slow


def _interrupt_when(args: list, ready, sig: int, to_group: bool) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Start ``gristmill ARGS`` in a process group of its own, send ``sig`` once ``ready()`` holds (to the
    process, or to its group as a terminal's Ctrl-C does), wait for it to exit: (its result, the members
    of its group still alive after it exited)."""
    proc = subprocess.Popen([GRISTMILL, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), start_new_session=True)
    deadline = time.time() + 300  # a bound on a hung start, not a timing
    while not ready():
        assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, "the run never reached the point of the signal"
        time.sleep(0.01)
    signal_stopped(proc, sig, to_group)
    out, err = proc.communicate(timeout=120)  # a hang guard: a stopped run exits in about a second
    left = group_left_behind(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), left


def _work_done(out: Path, suffix: str = ".json"):
    """True once a file's per-file work is complete in ``out/_work`` (what a rerun reuses): a corpus's
    per-file record (.json), a tokenize shard's encoding (.arrow)."""
    def ready() -> bool:
        try:
            return any(p.name.endswith(suffix) for p in (out / "_work").iterdir())
        except FileNotFoundError:
            return False
    return ready


def _work_records(out: Path) -> dict:
    """What a rerun may reuse: each finished file's record (its fingerprint and input), for a failure's message."""
    return {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k != "stats"}
            for p in (out / "_work").glob("*.json")}


def _assert_stopped_cleanly(r: subprocess.CompletedProcess, left: list[int], out: Path, sig: int) -> None:
    code, name = 128 + sig, signal.Signals(sig).name
    assert r.returncode == code, r.stderr[-3000:]
    assert not left, f"processes of the run still alive after it exited: {left}"
    assert f"interrupted by {name}: stopped (run the same command again to resume)" in r.stderr
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["exit_code"] == code and record["finished"]
    names = {p.name for p in out.rglob("*")}
    assert not {"_stats", "_spill", "manifest.json"} & names and not [n for n in names if ".tmp-" in n]
    assert (out / "_work").is_dir()  # the resumable work stays
    assert (out / LOCK_FILE).read_text() == ""  # no holder's note: the run saw its end
    with open(out / LOCK_FILE) as f:  # and the lock is free
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM-to-the-process", "Ctrl-C-to-the-group"])
def test_a_signalled_corpus_run_stops_cleanly_and_resumes(tmp_path, mini_crawl, mini_corpus, sig, to_group):
    out = tmp_path / "c"
    args = ["corpus", "--input", f"{mini_crawl}/*", "--output", out, "--config", DEMO_CONFIG]
    r, left = _interrupt_when(args, _work_done(out), sig, to_group)
    _assert_stopped_cleanly(r, left, out, sig)
    work = _work_records(out)

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the cleaned documents of an earlier run" in again.stderr, (work, again.stderr[-3000:])
    for shard in mini_corpus.rglob("lang=*/*"):  # the same corpus as an uninterrupted run
        assert (out / shard.relative_to(mini_corpus)).read_bytes() == shard.read_bytes(), shard
    assert json.loads((out / "run.json").read_text())["status"] == "succeeded"


def test_a_signalled_refresh_stops_cleanly_and_leaves_the_published_corpus_as_it_was(tmp_path, mini_crawl,
                                                                                      mini_corpus):
    published = mini_corpus  # the shared corpus: a refresh only reads it (and this test checks that)
    before = {p: p.read_bytes() for p in published.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    out = tmp_path / "next"
    inputs = sorted(str(p) for p in mini_crawl.iterdir())[:3]
    args = ["refresh", "--published", published, "--input", *inputs, "--output", out]
    r, left = _interrupt_when(args, _work_done(out), signal.SIGTERM, False)
    _assert_stopped_cleanly(r, left, out, signal.SIGTERM)
    assert {p: p.read_bytes() for p in published.rglob("*") if p.is_file() and p.name != LOCK_FILE} == before
    work = _work_records(out)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the cleaned documents" in again.stderr, (work, again.stderr[-3000:])


def test_a_signalled_tokenize_stops_cleanly_and_resumes(tmp_path, demo_corpus, demo_tokenizer):
    out = tmp_path / "tokens"
    args = ["tokenize", "--corpus", demo_corpus, "--tokenizer", demo_tokenizer, "--output", out, "--seq-len", "64"]
    r, left = _interrupt_when(args, _work_done(out, ".arrow"), signal.SIGTERM, False)
    _assert_stopped_cleanly(r, left, out, signal.SIGTERM)
    again = run_cli(*args, "-v")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing its encoding from an earlier run" in again.stderr
    assert run_cli("verify", out).returncode == 0

