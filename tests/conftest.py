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
