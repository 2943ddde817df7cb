"""The examples of docs/api.md run, in order, as one script: the documented API works as documented."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO, cli_env

pytestmark = pytest.mark.slow


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_python_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nno\n```\n```python\nb = a\n```\n")
    assert blocks == ["a = 1\n", "b = a\n"]


def test_api_doc_examples_run(tmp_path):
    blocks = python_blocks((REPO / "docs" / "api.md").read_text())
    assert len(blocks) >= 8
    for name in ("sample", "configs"):
        (tmp_path / name).symlink_to(REPO / name)
    # run as a user runs a script (its functions live in __main__, which the in-process runner can use)
    (tmp_path / "api_example.py").write_text("\n\n".join(blocks))
    r = subprocess.run([sys.executable, "api_example.py"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900, env=cli_env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    out = r.stdout
    assert re.search(r"kept \d+ of 1407 documents", out)
    assert "training sequences" in out and "perplexity" in out and "exported to" in out
    assert re.search(r"caps:shouting dropped [1-9]\d* documents", out)  # the example filter drops something
    assert len(list((tmp_path / "runs/api/own").rglob("*.arrow"))) >= 1
    assert re.search(r"near-dedup converged after \d+ round", out)
    assert not (tmp_path / "runs/api/near-dedup-work").exists()  # near_dedup removed its work directory
    assert (tmp_path / "runs/api/hf/config.json").is_file()


def test_no_doc_or_help_sends_a_user_to_a_setup_py_that_does_not_exist():
    """gristmill is built from pyproject.toml; the cluster runners' workers get it from an image or the sdist."""
    assert not (REPO / "setup.py").exists()
    texts = {p.name: p.read_text(encoding="utf-8") for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")]}
    texts["corpus --help"] = subprocess.run([sys.executable, "-m", "gristmill", "corpus", "--help"],
                                            capture_output=True, text=True, env=cli_env(), cwd=REPO, check=True).stdout
    assert [name for name, text in texts.items() if "setup.py" in text or "--setup_file" in text] == []
    assert "--extra_package" in " ".join(texts["corpus --help"].split())
