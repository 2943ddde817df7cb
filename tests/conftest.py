"""Shared fixtures. Real data: the bundled sample (sample/crawl) and ../shared/data next to the repo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample" / "crawl"
SAMPLE_GLOB = str(SAMPLE / "*")
SHARED = Path(os.environ.get("GRISTMILL_SHARED_DATA", REPO.parent / "shared" / "data"))
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
#: the console script of the environment running the tests
GRISTMILL = str(Path(sys.executable).parent / "gristmill")


def cli_env() -> dict:
    """The environment for a command a test runs: no RAY_ADDRESS (each test's Ray is its own)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def run_cli(*args, cwd=REPO, timeout: int = 300, check: bool = False, env: dict | None = None):
    """Run ``gristmill ARGS``; with ``check``, fail the test (showing the output's end) unless it exits 0."""
    r = subprocess.run([GRISTMILL, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                       env=env or cli_env())
    if check:
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def run_cli_and_kill_when(args: list, ready, timeout: int = 300) -> None:
    """Start ``gristmill ARGS`` in its own process group, wait until ``ready()`` holds, then SIGKILL the
    group (the command and anything it started): a crash at a known point of a run."""
    proc = subprocess.Popen([GRISTMILL, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=cli_env(), start_new_session=True)
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set GRISTMILL_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def default_cfg():
    from gristmill.config import GristmillConfig

    return GristmillConfig()


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """The sample crawl through the corpus pipeline with the demo config (shared by the tokenizer and trainer tests)."""
    from gristmill.config import load_config
    from gristmill.pipelines.corpus import run_corpus

    out = tmp_path_factory.mktemp("corpus") / "c"
    run_corpus([str(SAMPLE / "*")], str(out), load_config(DEMO_CONFIG), ["--runner", "DirectRunner"], progress=False)
    return out


@pytest.fixture(scope="session")
def demo_tokenizer(demo_corpus, tmp_path_factory):
    from gristmill.config import load_config
    from gristmill.tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "t"
    train_tokenizer(str(demo_corpus), str(out), load_config(DEMO_CONFIG).tokenizer)
    return out


@pytest.fixture(scope="session")
def demo_tokens64(demo_corpus, demo_tokenizer, tmp_path_factory):
    """The demo corpus as token shards of 64 + 1 tokens (quick to train on)."""
    from gristmill.config import load_config
    from gristmill.pipelines.tokenize import run_tokenize

    out = tmp_path_factory.mktemp("tokens") / "k"
    cfg = load_config(DEMO_CONFIG, ["tokenize.seq_len=64"]).tokenize
    run_tokenize(str(demo_corpus), str(demo_tokenizer), str(out), cfg, ["--runner", "DirectRunner"])
    return out
