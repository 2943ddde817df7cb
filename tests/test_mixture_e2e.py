"""Pretraining on a mixture of token directories: the plan before training, the proportions, exact
resume after a kill, and mixtures refused before any training."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from gristmill.tokenizer.tokens import TokenSplit
from gristmill.trainer.mixture import MixedSplit

from .test_trainer_e2e import _final_weights, _max_abs_diff, _metrics, _pretrain, _run_and_kill

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sources(demo_tokens64, tmp_path_factory):
    """Two token directories with one tokenizer: the demo tokens, and a copy standing for a second source."""
    books = tmp_path_factory.mktemp("mix") / "books"
    shutil.copytree(demo_tokens64, books)
    return Path(demo_tokens64), books


def _mix_config(tmp_path: Path, sources, name: str, caps=(None, None), steps: int = 40, **pretrain) -> Path:
    web, books = sources
    mixture = [{"name": "web", "data": str(web), "weight": 0.75, "max_epochs": caps[0]},
               {"name": "books", "data": str(books), "weight": 0.25, "max_epochs": caps[1]}]
    tree = {
        "model": {"preset": "small"},
        "pretrain": {"mixture": mixture, "storage_path": str(tmp_path / "runs"), "name": name, "num_workers": 0,
                     "batch_size": 16, "micro_batch_size": 8, "max_steps": steps, "warmup_steps": 5, "log_every": 1,
                     "eval_every": 20, "eval_batches": 4, "checkpoint_every": 10, **pretrain},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_mixed_split_reads_the_sources_rows(sources):
    web, books = sources
    a, b = TokenSplit(web, "train"), TokenSplit(books, "train")
    mixed = MixedSplit([a, b], ["web", "books"], [0.75, 0.25])
    idx = mixed.stream(0).indices(0, 64)
    rows = mixed.rows(idx)
    for (s, q), row in zip(idx, rows):
        assert np.array_equal(row, (a if s == 0 else b).rows(np.array([q]))[0])
    assert abs((idx[:, 0] == 0).mean() - 0.75) <= 1 / 64 + 1e-9
    val = MixedSplit([TokenSplit(web, "val"), TokenSplit(books, "val")], ["web", "books"])
    assert len(val) == 2 * len(TokenSplit(web, "val"))
    last_books = TokenSplit(books, "val").rows(np.array([len(val) // 2 - 1]))
    assert np.array_equal(val.rows(np.array([len(val) - 1])), last_books)


def test_a_mixture_trains_in_its_proportions_and_resumes_exactly(tmp_path, sources):
    ref = _pretrain(_mix_config(tmp_path, sources, "whole"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    whole = tmp_path / "runs" / "whole"
    plan = json.loads((whole / "mixture.json").read_text())
    by = {r["source"]: r for r in plan["sources"]}
    assert by["web"]["tokens_used"] + by["books"]["tokens_used"] == 40 * 16 * 64
    assert abs(by["web"]["share"] - 0.75) <= 0.01 and abs(by["books"]["share"] - 0.25) <= 0.01
    assert "tokens available" in ref.stderr + ref.stdout
    losses = [m["loss"] for m in _metrics(whole) if "loss" in m]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # it learns

    cfg = _mix_config(tmp_path, sources, "crashed")
    run_dir = tmp_path / "runs" / "crashed"
    proc = _run_and_kill(cfg, run_dir, 12, lambda p: os.killpg(p.pid, signal.SIGKILL))
    proc.wait(timeout=60)
    again = _pretrain(cfg)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [m["step"] for m in _metrics(run_dir) if "loss" in m] == list(range(1, 41))
    assert _max_abs_diff(_final_weights(whole, 40), _final_weights(run_dir, 40)) <= 1e-6


def test_bad_mixtures_are_refused_before_training(tmp_path, sources):
    web, books = sources
    capped = _pretrain(_mix_config(tmp_path, sources, "capped", caps=(None, 0.01), steps=200))
    assert capped.returncode != 0 and "'books' would be read" in capped.stderr and "max_epochs 0.01" in capped.stderr
    assert not (tmp_path / "runs" / "capped" / "metrics.jsonl").exists()

    other = tmp_path / "other_tok"
    shutil.copytree(books, other)
    m = json.loads((other / "manifest.json").read_text())
    m["tokenizer_model_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    r = _pretrain(_mix_config(tmp_path, (web, other), "mixed_tokenizers"))
    assert r.returncode != 0 and "differ in tokenizer" in r.stderr

    r = _pretrain(_mix_config(tmp_path, (web, tmp_path / "missing"), "missing"))
    assert r.returncode != 0 and "mixture source 'books'" in r.stderr

    both = _mix_config(tmp_path, sources, "both", data=str(web))
    r = _pretrain(both)
    assert r.returncode != 0 and "data and pretrain.mixture are both set" in r.stderr
