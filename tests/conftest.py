"""Shared fixtures. Real data: the bundled sample (sample/crawl) and ../shared/data next to the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample" / "crawl"
SHARED = Path(os.environ.get("GRISTMILL_SHARED_DATA", REPO.parent / "shared" / "data"))


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
    from pipelines.config import GristmillConfig

    return GristmillConfig()


DEMO_CONFIG = REPO / "configs" / "demo.yaml"


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """The sample crawl through the corpus pipeline with the demo config (shared by the tokenizer and trainer tests)."""
    from pipelines.config import load_config
    from pipelines.corpus import run_corpus

    out = tmp_path_factory.mktemp("corpus") / "c"
    run_corpus([str(SAMPLE / "*")], str(out), load_config(DEMO_CONFIG), ["--runner", "DirectRunner"], progress=False)
    return out


@pytest.fixture(scope="session")
def demo_tokenizer(demo_corpus, tmp_path_factory):
    from pipelines.config import load_config
    from tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "t"
    train_tokenizer(str(demo_corpus), str(out), load_config(DEMO_CONFIG).tokenizer)
    return out


@pytest.fixture(scope="session")
def demo_tokens64(demo_corpus, demo_tokenizer, tmp_path_factory):
    """The demo corpus as token shards of 64 + 1 tokens (quick to train on)."""
    from pipelines.config import load_config
    from pipelines.tokenize import run_tokenize

    out = tmp_path_factory.mktemp("tokens") / "k"
    cfg = load_config(DEMO_CONFIG, ["tokenize.seq_len=64"]).tokenize
    run_tokenize(str(demo_corpus), str(demo_tokenizer), str(out), cfg, ["--runner", "DirectRunner"])
    return out
