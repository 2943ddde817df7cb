"""Atomic writes under concurrency."""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from gristmill import io


def test_a_directory_made_by_another_worker_in_between_is_not_an_error(tmp_path, monkeypatch):
    """Two workers write the first files of a new directory: both see it missing, one makes it, the other's
    mkdirs then fails with 'exists'. That must not fail the write (seen in CI with the multi-process runner)."""
    target = tmp_path / "_index"
    target.mkdir()  # the other worker won the race
    real_exists = FileSystems.exists
    calls = {"n": 0}

    def exists_missing_once(path):
        if path == str(target) and calls["n"] == 0:
            calls["n"] += 1
            return False  # as this worker saw it a moment ago
        return real_exists(path)

    monkeypatch.setattr(FileSystems, "exists", staticmethod(exists_missing_once))
    io.write_bytes_atomic(str(target / "part-00000.arrow"), b"data")
    assert (target / "part-00000.arrow").read_bytes() == b"data" and calls["n"] == 1
