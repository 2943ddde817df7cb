"""The monthly refresh as a scheduler runs it (ops/monthly_refresh.sh, the Airflow DAG's tasks):
each version is written, verified, tokenized and only then published by one atomic rename; a
refresh killed at any point leaves the published corpus exactly as it was."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import GRISTMILL, REPO, SAMPLE, cli_env, kill_process_group, run_cli

pytestmark = pytest.mark.slow

SCRIPT = REPO / "ops" / "monthly_refresh.sh"
DAG = REPO / "ops" / "airflow_monthly_refresh.py"
FIRST = str(SAMPLE / "oscar-2019-multilingual.jsonl.zst")
SECOND = str(SAMPLE / "o*")  # the same file again, as a new month's crawl


def _env() -> dict:
    return {**cli_env(), "GRISTMILL": GRISTMILL, "GRISTMILL_OPTIONS": "--set write.max_docs_per_shard=200"}


def _step(root: Path, crawl: str, version: str, step: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(root), crawl, version, step], capture_output=True, text=True,
                          env=_env(), timeout=600)


def _dag_steps() -> list[str]:
    """The DAG's tasks, in order, read from the file (Airflow itself need not be installed)."""
    tree = ast.parse(DAG.read_text())
    steps = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "STEPS")
    return list(ast.literal_eval(steps))


def test_the_airflow_dag_runs_the_steps_in_order(tmp_path, monkeypatch):
    """Airflow (the `ops` extra) parses the DAG: its tasks are the script's steps, chained, and each
    renders to the script call the other tests run."""
    pytest.importorskip("airflow")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    import importlib.util

    import pendulum

    spec = importlib.util.spec_from_file_location("airflow_monthly_refresh", DAG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    assert [t.task_id for t in dag.tasks] == _dag_steps() == ["refresh", "verify", "tokenize", "publish"]
    assert {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} == {
        "refresh": ["verify"], "verify": ["tokenize"], "tokenize": ["publish"], "publish": []}
    assert dag.max_active_runs == 1
    context = {"logical_date": pendulum.datetime(2026, 2, 1)}
    for task in dag.tasks:
        command = task.render_template(task.bash_command, context)
        assert command == f"{module.SCRIPT} {module.ROOT} '/data/crawl/2026-02/*.warc.gz' 2026-02 {task.task_id}"


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The first month, run as the DAG runs it (task by task), with a tokenizer in ROOT."""
    root = tmp_path_factory.mktemp("corpus")
    steps = _dag_steps()
    assert steps == ["refresh", "verify", "tokenize", "publish"]
    r = _step(root, FIRST, "2026-01", "refresh")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("tokenizer", "train", "--corpus", root / "2026-01", "--output", root / "tokenizer",
                "--set", "tokenizer.vocab_size=4000", check=True)
    # what it did while it worked: sentences read, then training started and ended
    assert re.search(r"read [\d,]+ lines from [\d,]+ documents in [\d.]+ s; training SentencePiece", r.stderr)
    assert re.search(r"trained in [\d.]+ s", r.stderr), r.stderr[-2000:]
    for step in steps[1:]:
        r = _step(root, FIRST, "2026-01", step)
        assert r.returncode == 0, r.stderr[-3000:]
    assert os.readlink(root / "CURRENT") == "2026-01"
    assert json.loads((root / "2026-01.tokens" / "manifest.json").read_text())["kind"] == "tokens"
    return root


def test_a_month_is_published_only_when_written_and_verified(published):
    root = published
    r = subprocess.run(["bash", str(SCRIPT), str(root), SECOND, "2026-02"], capture_output=True, text=True,
                       env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.readlink(root / "CURRENT") == "2026-02"
    versions = json.loads((root / "2026-02" / "versions.json").read_text())
    assert [Path(v["path"]).name for v in versions] == ["2026-01", "2026-02"]
    counts = json.loads((root / "2026-02" / "manifest.json").read_text())["counts"]
    assert counts["kept"] == 0 and counts["dropped"]["exact_dedup:published_duplicate"] > 0  # nothing new
    assert "nothing new to tokenize" in r.stderr and not (root / "2026-02.tokens").exists()
    # run again: already published, nothing done
    again = subprocess.run(["bash", str(SCRIPT), str(root), SECOND, "2026-02"], capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert again.returncode == 0 and "already published" in again.stderr


# kill points are states of the run, not seconds (a fast machine could finish before a clock point):
# the version directory appears (the corpus run has begun), its _stats, its manifest (written, not yet
# verified), the token directory (verified, tokenizing: just before publishing)
@pytest.mark.parametrize("kill_after", ["output", "stats", "manifest", "tokens"])
def test_a_refresh_killed_at_any_point_leaves_the_published_corpus_as_it_was(published, mini_crawl, kill_after):
    """The new month: the mini crawl (tests/conftest.py; every reader format)."""
    root = published
    current = os.readlink(root / "CURRENT")
    before = digest(root / current)
    version = f"killed-{kill_after}"
    proc = subprocess.Popen(["bash", str(SCRIPT), str(root), str(mini_crawl / "*"), version], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), start_new_session=True)
    new = root / version
    marker = {"output": new, "stats": new / "_stats", "manifest": new / "manifest.json",
              "tokens": root / f"{version}.tokens"}[kill_after]
    deadline = time.time() + 300  # a wait, not a timing
    while proc.poll() is None and time.time() < deadline and not marker.exists():
        time.sleep(0.01)
    assert proc.poll() is None, f"the refresh ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
    kill_process_group(proc)
    assert marker.exists(), f"the refresh never reached {kill_after} in 300 s"
    assert os.readlink(root / "CURRENT") == current, "published although killed"
    assert digest(root / current) == before, "the published corpus changed"
    # the output of the killed run is not a finished corpus (unless it was killed after the manifest, when
    # it is one that verify accepts): either way CURRENT never pointed at it. Killed the moment its directory
    # appeared, before the output's marker is in it, it is not yet a gristmill output at all (verify: usage, 2)
    v = run_cli("verify", new)
    assert v.returncode in ((0, 6, 2) if kill_after == "output" else (0, 6)), v.stderr[-2000:]
    if v.returncode == 2:
        assert "no manifest.json, no corpus or token marker" in v.stderr
    if v.returncode == 0:
        assert kill_after in ("manifest", "tokens")
