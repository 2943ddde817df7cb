"""Pretraining on a mixture of token directories: the plan before training, the proportions, and mixtures
refused before any training. (Exact resume of a killed mixture run: test_trainer_e2e.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gristmill import api
from gristmill.tokenizer.tokens import TokenSplit
from gristmill.trainer.data import DataError
from gristmill.trainer.mixture import MixedSplit

from . import training
from .conftest import mixture_tree

pytestmark = pytest.mark.slow


def test_mixed_split_reads_the_sources_rows(mixture_sources):
    web, books = mixture_sources
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


def test_a_mixture_trains_in_its_proportions(mixture_run):
    plan = json.loads((mixture_run / "mixture.json").read_text())
    by = {r["source"]: r for r in plan["sources"]}
    assert by["web"]["tokens_used"] + by["books"]["tokens_used"] == 40 * 16 * 64
    assert abs(by["web"]["share"] - 0.75) <= 0.01 and abs(by["books"]["share"] - 0.25) <= 0.01
    losses = [m["loss"] for m in training.metrics(mixture_run) if "loss" in m]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # it learns


def _refused(tmp_path, tree: dict, match: str) -> None:
    """Refused in this process, before any training (no metrics written)."""
    cfg = training.load(training.write_config(tmp_path / f"{tree['pretrain']['name']}.yaml", tree))
    with pytest.raises(DataError, match=match):
        api.pretrain(cfg)
    assert not (tmp_path / "runs" / tree["pretrain"]["name"] / "metrics.jsonl").exists()


def test_bad_mixtures_are_refused_before_training(tmp_path, mixture_sources):
    web, books = mixture_sources
    # on the command line: an error, not a traceback
    capped = training.cli("pretrain", training.write_config(
        tmp_path / "capped.yaml", mixture_tree(tmp_path, mixture_sources, "capped", caps=(None, 0.01), steps=200)))
    assert capped.returncode == 2 and "'books' would be read" in capped.stderr and "max_epochs 0.01" in capped.stderr
    assert "Traceback" not in capped.stderr
    assert not (tmp_path / "runs" / "capped" / "metrics.jsonl").exists()

    other = tmp_path / "other_tok"
    shutil.copytree(books, other)
    m = json.loads((other / "manifest.json").read_text())
    m["tokenizer_model_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    _refused(tmp_path, mixture_tree(tmp_path, (web, other), "mixed_tokenizers"), "differ in tokenizer")
    _refused(tmp_path, mixture_tree(tmp_path, (web, tmp_path / "missing"), "missing"), "mixture source 'books'")
    _refused(tmp_path, mixture_tree(tmp_path, mixture_sources, "both", data=str(web)),
             "data and pretrain.mixture are both set")
