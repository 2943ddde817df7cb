"""The corpus run's progress as the driver reads it from the workers' files (pipelines/progress.py)."""

from __future__ import annotations

import json
import time

from gristmill.pipelines import progress as pr


def _run(tmp_path, bar: bool):
    work = tmp_path / "_work"
    work.mkdir(exist_ok=True)
    return work, pr.CorpusProgress(str(tmp_path), total_files=3, total_bytes=3000, bar=bar, interval=0.05)


def test_files_done_and_documents_in_flight_are_counted(tmp_path):
    work, p = _run(tmp_path, bar=False)
    (work / "a.json").write_text(json.dumps({"stats": {"documents": 10, "size": 1000}}))
    (work / "b.progress").write_text(json.dumps({"documents": 5}))
    (work / "c.json").write_text("{not json yet")  # being written: skipped, read on a later poll
    files, docs, done_bytes = p._poll()
    assert (files, docs) == (1, 15)
    assert done_bytes == 1500  # 1000 bytes done + 5 documents at 100 bytes each
    (work / "c.json").write_text(json.dumps({"stats": {"documents": 2, "size": 1000}}))
    (work / "a.progress").write_text(json.dumps({"documents": 9}))  # a finished file's progress: not in flight
    assert p._poll()[:2] == (2, 17)
    # a file in flight with many small documents: the estimate overshoots, the bar stops short of 100 %
    (work / "b.progress").write_text(json.dumps({"documents": 500}))
    files, _, done_bytes = p._poll()
    assert files == 2 and done_bytes == 2970
    (work / "b.json").write_text(json.dumps({"stats": {"documents": 500, "size": 1000}}))
    assert p._poll()[2] == 3000  # every file done: 100 %


def test_a_terminal_gets_a_bar_and_a_log_gets_phase_lines(tmp_path, capsys, caplog):
    work, p = _run(tmp_path, bar=True)
    (work / "old.progress").write_text(json.dumps({"documents": 99}))  # a crashed run's: removed at the start
    with caplog.at_level("INFO", logger="gristmill.corpus"):
        with p:
            assert not (work / "old.progress").exists()
            fp = pr.FileProgress(str(work / "a.progress"))
            fp._last -= 10  # as if a second had passed: the next document writes the file
            fp.add()
            assert json.loads((work / "a.progress").read_text()) == {"documents": 1}
            deadline = time.time() + 120  # a wait, not a timing: the poll is every 0.05 s
            while "files 0/3, 1 docs" not in capsys.readouterr().err and time.time() < deadline:
                time.sleep(0.05)
            assert time.time() < deadline, "the bar never showed the document in flight"
            for name in "abc":
                (work / f"{name}.json").write_text(json.dumps({"stats": {"documents": 4, "size": 1000}}))
            (tmp_path / "en").mkdir()
            (tmp_path / "en" / "part-00000.arrow").write_bytes(b"x")
            while p.write_started_at is None and time.time() < deadline + 120:
                time.sleep(0.05)
    text = caplog.text
    assert "read + clean: 3 files, 12 documents" in text
    assert "dedup:" in text and "writing shards" in text and "write:" in text


def test_a_log_gets_a_progress_line_a_while_unless_told_not_to(tmp_path, caplog):
    """Without a bar (a log, not a terminal) one progress line every LOG_EVERY_S; --no-progress: none (the
    phase totals stay)."""
    for lines, expected in ((True, True), (False, False)):
        work = tmp_path / str(lines) / "_work"
        work.mkdir(parents=True)
        p = pr.CorpusProgress(str(work.parent), total_files=3, total_bytes=3000, bar=False, lines=lines)
        (work / "a.json").write_text(json.dumps({"stats": {"documents": 4, "size": 1000}}))
        p._last_line -= pr.LOG_EVERY_S + 1  # as if that long had passed
        caplog.clear()
        with caplog.at_level("INFO", logger="gristmill.corpus"):
            p.update()
        assert ("read + clean: 1/3 files" in caplog.text) == expected, caplog.text
