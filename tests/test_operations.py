"""Runs as a scheduler sees them: one run at a time per output, nothing left behind by a failed run,
run.json for monitoring, documented exit codes, and `gristmill verify`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gristmill.errors import ExitCode
from gristmill.locks import LOCK_FILE

from .conftest import DEMO_CONFIG, GRISTMILL, SAMPLE, SAMPLE_GLOB, cli_env, run_cli

pytestmark = pytest.mark.slow

PARQUET = str(SAMPLE / "ccnet-cc-main-2020-16.parquet")


def _corpus(out: Path, *extra, inputs=(PARQUET,)):
    return run_cli("corpus", "--input", *inputs, "--output", out, "--config", DEMO_CONFIG, "-q", *extra)


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _start_held_run(out: Path) -> subprocess.Popen:
    """A corpus run, returned stopped (SIGSTOP) once it holds its output's lock: it holds the lock, whatever
    the machine's speed, until it is continued (SIGCONT)."""
    proc = subprocess.Popen([GRISTMILL, "corpus", "--input", PARQUET, "--output", str(out), "--config",
                             str(DEMO_CONFIG), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    deadline = time.time() + 120  # a bound on a hung start, not a timing
    while not ((out / "run.json").exists() and _run_json(out)["status"] == "running"):
        assert proc.poll() is None and time.time() < deadline, "the first run never started"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    return proc


def test_a_second_run_into_the_same_output_is_refused_and_harms_nothing(tmp_path):
    out = tmp_path / "c"
    first = _start_held_run(out)
    try:
        second = _corpus(out)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == ExitCode.LOCKED == 5, second.stderr
    assert f"{out} is being written by `gristmill corpus` (pid {first.pid} on" in second.stderr
    assert "wait for it to finish, or choose another output directory" in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    assert _run_json(out)["status"] == "succeeded" and _run_json(out)["pid"] == first.pid
    assert run_cli("verify", out).returncode == 0
    assert not (out / "_stats").exists() and not (out / "_spill").exists()
    assert (out / LOCK_FILE).read_text() == ""  # a clean end leaves no holder's note


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    out = tmp_path / "c"
    assert _corpus(out).returncode == 0
    note = {"command": "corpus", "host": "gone", "pid": 999999, "started": "2026-01-01T00:00:00"}
    (out / LOCK_FILE).write_text(json.dumps(note))  # what a killed run leaves: its note, no lock
    r = _corpus(out)
    assert r.returncode == 0, r.stderr
    assert "was being written by `gristmill corpus` (pid 999999 on gone" in r.stderr and "did not finish" in r.stderr


def test_a_failed_run_leaves_no_temporaries_and_says_how_it_ended(tmp_path):
    out = tmp_path / "c"
    assert _corpus(out).returncode == 0
    # the index shards cannot be written (a file where their directory goes): the job fails part-way,
    # after other branches have written their statistics and the documents their spill files
    for p in (out / "_index").iterdir():
        p.unlink()
    (out / "_index").rmdir()
    (out / "_index").write_text("in the way")
    r = _corpus(out, inputs=(SAMPLE_GLOB,))
    assert r.returncode == ExitCode.INTERNAL, r.stderr[-2000:]
    left = {p.name for p in out.iterdir()}
    assert not {"_stats", "_spill", "manifest.json"} & left  # no temporaries; not a finished output any more
    record = _run_json(out)
    assert record["status"] == "failed" and record["exit_code"] == 1 and record["error"]
    v = run_cli("verify", out)
    assert v.returncode == ExitCode.INTEGRITY and "not a finished gristmill output" in v.stdout + v.stderr


def test_exit_codes_of_input_and_integrity_problems(tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip at all")
    r = run_cli("corpus", "--input", bad, "--output", tmp_path / "o")
    assert r.returncode == ExitCode.INPUT == 4 and "not gzip-compressed" in r.stderr
    assert not (tmp_path / "o").exists()  # refused before writing anything

    out = tmp_path / "c"
    assert _corpus(out).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / manifest["shards"][0]["path"]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")  # one byte changed
    (out / manifest["rejected_shards"][0]["path"]).unlink()
    v = run_cli("verify", out)
    assert v.returncode == ExitCode.INTEGRITY == 6
    assert f"{manifest['shards'][0]['path']}: checksum differs" in v.stderr
    assert f"{manifest['rejected_shards'][0]['path']}: missing" in v.stderr

    # files the manifest does not list: an extra shard (pyarrow.dataset and load_dataset would read it)
    # and a temporary a stopped writer left
    extra = Path(manifest["shards"][0]["path"]).with_name("part-99999.arrow")
    (out / extra).write_bytes((out / manifest["shards"][0]["path"]).read_bytes())
    (out / "run.json.tmp-0123abcd").write_text("{}")
    v = run_cli("verify", out)
    assert v.returncode == ExitCode.INTEGRITY
    assert f"{extra}: not listed in the manifest" in v.stderr and "run.json.tmp-0123abcd: not listed" in v.stderr
    assert "run.json: not listed" not in v.stderr and "manifest.json: not listed" not in v.stderr

    # a directory that is no corpus or token output at all (an export, a typo) is a usage error, not integrity
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text("{}")
    for where in (tmp_path / "export", tmp_path / "nothing-here"):
        v = run_cli("verify", where)
        assert v.returncode == ExitCode.USAGE and "is not a corpus or token directory" in v.stderr, v.stderr


def test_tokens_are_not_written_over_a_corpus(tmp_path, demo_tokenizer):
    out = tmp_path / "c"
    assert _corpus(out).returncode == 0
    before = (out / "manifest.json").read_bytes()
    r = run_cli("tokenize", "--corpus", out, "--tokenizer", demo_tokenizer, "--output", out)
    assert r.returncode == ExitCode.USAGE and "holds a corpus" in r.stderr and "--overwrite" in r.stderr
    assert (out / "manifest.json").read_bytes() == before
    tokens = tmp_path / "t"
    assert run_cli("tokenize", "--corpus", out, "--tokenizer", demo_tokenizer, "--output", tokens, "-q").returncode == 0
    assert run_cli("verify", tokens).returncode == 0 and _run_json(tokens)["status"] == "succeeded"


def test_usage_errors_are_found_before_anything_is_created(tmp_path):
    out = tmp_path / "o"
    r = _corpus(out, "--runner", "NoSuchRunner")
    assert r.returncode == ExitCode.USAGE == 2, r.stderr[-2000:]
    assert "--runner NoSuchRunner: Beam has no runner of that name; use one of" in r.stderr
    assert "DirectRunner" in r.stderr
    r = _corpus(out, "--runner", "DaskRunner")  # outside Beam's short names: said how to name it
    assert r.returncode == 2 and "--runner apache_beam.runners.dask.dask_runner.DaskRunner" in r.stderr
    assert not out.exists()  # no lock, marker or run.json

    published = tmp_path / "p"
    assert _corpus(published).returncode == 0
    before = sorted((p.name, p.stat().st_mtime_ns) for p in published.iterdir())
    for output in (published, published / "next"):
        r = run_cli("refresh", "--published", published, "--input", PARQUET, "--output", output)
        assert r.returncode == 2, r.stderr[-2000:]
        assert ("is the published corpus" if output == published else "inside one another") in r.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in published.iterdir()) == before


def test_a_fifo_among_the_inputs_is_refused_at_planning_or_skipped(tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "a.parquet").write_bytes(Path(PARQUET).read_bytes())
    os.mkfifo(crawl / "b.jsonl")  # nobody ever writes it: opening it for reading would block forever
    out = tmp_path / "o"
    r = run_cli("corpus", "--input", f"{crawl}/*", "--output", out, "--config", DEMO_CONFIG)
    assert r.returncode == ExitCode.INPUT, r.stderr[-2000:]
    assert f"{crawl}/b.jsonl: not a regular file but a FIFO (named pipe)" in r.stderr
    assert not out.exists()
    r = run_cli("corpus", "--input", f"{crawl}/*", "--output", out, "--config", DEMO_CONFIG, "--skip-bad-files")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["path"] for s in manifest["skipped_inputs"]] == [f"{crawl}/b.jsonl"]
