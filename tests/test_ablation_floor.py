"""The count-model floor and the scale warning of an ablation (trainer/floor.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gristmill.trainer import floor


def _reference(train_rows, windows, v, nbytes):
    """Witten-Bell bigram over add-one unigram, written out token by token."""
    pairs = [(int(r[i]), int(r[i + 1])) for a in train_rows for r in a for i in range(len(r) - 1)]
    uni = [0] * v
    for _, b in pairs:
        uni[b] += 1
    n = len(pairs)
    out_uni = out_bi = 0.0
    for r in windows:
        for i in range(len(r) - 1):
            a, b = int(r[i]), int(r[i + 1])
            pu = (uni[b] + 1) / (n + v)
            ca = sum(1 for x, _ in pairs if x == a)
            cab = sum(1 for x, y in pairs if x == a and y == b)
            ta = len({y for x, y in pairs if x == a})
            pb = (cab + ta * pu) / (ca + ta) if ca else pu
            out_uni -= math.log2(pu)
            out_bi -= math.log2(pb)
    return out_uni / nbytes, out_bi / nbytes


def test_count_models_equal_the_formulas_written_out():
    rng = np.random.default_rng(0)
    v = 12
    train = [rng.integers(0, v, (20, 9)), rng.integers(0, 6, (5, 9))]
    held = rng.integers(0, v, (4, 9))
    got = floor.count_model_bpb(train, held, v, utf8_bytes=100)
    uni, bi = _reference(train, held, v, 100)
    assert got["unigram_bpb"] == pytest.approx(uni) and got["bigram_bpb"] == pytest.approx(bi)


def test_a_predictable_text_has_a_low_bigram_floor():
    cycle = np.tile(np.arange(8), 200)  # 0 1 2 ... 7 0 1 ...: each token determines the next
    rows = [np.stack([cycle[i * 16: i * 16 + 17] for i in range(90)])]
    f = floor.count_model_bpb(rows, rows[0][:10], 8, utf8_bytes=160)
    assert f["bigram_bpb"] < 0.1 * f["unigram_bpb"]
    assert f["unigram_bpb"] == pytest.approx(3.0, rel=0.01)  # log2(8) bits per token, one byte each


def test_capped_pairs_still_give_a_floor():
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 50, (1000, 33))]
    full = floor.count_model_bpb(rows, rows[0][:5], 50, 1000)
    capped = floor.count_model_bpb(rows, rows[0][:5], 50, 1000, max_pairs=3_200)
    assert capped["unigram_bpb"] == pytest.approx(full["unigram_bpb"], rel=0.05)


def test_scale_warnings_say_what_budget_is_needed():
    ok = floor.scale_warnings({"a": 1.0, "b": 1.1}, {"a": 1.5, "b": 1.6}, tokens_per_run=10_000_000,
                              n_params=1_000_000)
    assert ok == []
    near = floor.scale_warnings({"a": 1.45, "b": 1.0}, {"a": 1.5, "b": 1.6}, 10_000_000, 1_000_000)
    assert len(near) == 1 and "a (-0.050" in near[0] and "b (" not in near[0]
    few = floor.scale_warnings({}, {}, tokens_per_run=400_000, n_params=1_000_000)
    assert len(few) == 1 and "0.40 per parameter" in few[0] and "ablate.tokens ≥ 5,000,000" in few[0]
