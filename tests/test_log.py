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
