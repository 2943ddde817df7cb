"""The one logging setup: log lines never print into a progress bar."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

from gristmill.log import setup_logging


def test_a_log_line_prints_above_a_progress_bar_not_into_it(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(0)
        bar = tqdm(total=10, file=sys.stderr, mininterval=0, desc="work")
        bar.update(1)
        logging.getLogger("gristmill.test").info("a line of log")
        bar.update(1)
        bar.close()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    segments = err.replace("\r", "\n").split("\n")
    line = next(s for s in segments if "a line of log" in s)
    assert "work:" not in line and "it/s" not in line, repr(err)
    assert "2/10" in err  # the bar was drawn again after the line


def test_the_python_api_prints_what_the_cli_prints(tmp_path):
    """Used from Python, a corpus run prints none of Beam's import-time noise nor gRPC's fork lines (the
    per-file pool forks), as the CLI does not; the caller's own warnings still show."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = (
        "import logging\n"
        "from gristmill import api\n"
        f"api.run_corpus([{str(repo / 'sample' / 'crawl' / '*.parquet')!r}, "
        f"{str(repo / 'sample' / 'crawl' / '*.warc.wet.gz')!r}], {str(tmp_path / 'out')!r})\n"
        "logging.getLogger('mine').warning('my own warning')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "GRISTMILL_LOG_LEVEL")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "manifest.json").is_file()
    for noise in ("Failed to import", "apitools not found", "fork_posix.cc", "Traceback"):
        assert noise not in r.stderr, r.stderr[-3000:]
    assert "my own warning" in r.stderr
