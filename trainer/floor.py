"""The floor an ablation's models must clear: count models of each variant's training tokens.

A transformer trained for a few hundred thousand tokens may predict held-out text no better than a
table of token counts. If it does not, its verdicts say which corpus has the better *bigram
statistics*, not which trains the better language model — "scale too small". For each variant, on
the same held-out tokens the models are scored on:

* **unigram**: add-one smoothed token frequencies of the variant's training split;
* **bigram**: Witten–Bell interpolation of its bigram counts with the unigram (no parameter to tune).

Both in bits per UTF-8 byte, as the models. Training pairs are capped (evenly spaced rows) so a large
corpus costs bounded memory.
"""

from __future__ import annotations

import math

import numpy as np

MAX_PAIRS = 20_000_000
#: models must beat the bigram floor by at least this many bits per byte, and see this many tokens
#: per parameter, for a run to say something about the data (Chinchilla's optimum is ~20 tokens/param)
MIN_MARGIN_BPB = 0.1
MIN_TOKENS_PER_PARAM = 5


def _pairs(rows: list[np.ndarray], max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    total = sum(a.shape[0] * (a.shape[1] - 1) for a in rows)
    keep = min(1.0, max_pairs / total) if total else 1.0
    prev, cur = [], []
    for a in rows:
        if keep < 1.0:  # evenly spaced rows of each shard
            a = a[np.unique(np.linspace(0, a.shape[0] - 1, max(1, int(a.shape[0] * keep))).astype(np.int64))]
        prev.append(a[:, :-1].reshape(-1).astype(np.int64))
        cur.append(a[:, 1:].reshape(-1).astype(np.int64))
    return (np.concatenate(prev), np.concatenate(cur)) if prev else (np.zeros(0, np.int64), np.zeros(0, np.int64))


def count_model_bpb(train_rows: list[np.ndarray], heldout_windows: np.ndarray, vocab_size: int, utf8_bytes: int,
                    max_pairs: int = MAX_PAIRS) -> dict[str, float]:
    """Unigram and bigram bits per byte on ``heldout_windows`` ((n, L + 1) rows: each row's last L tokens
    are predicted, each from the token before it), from the (n, L + 1) training rows."""
    prev, cur = _pairs(train_rows, max_pairs)
    v = vocab_size
    uni = np.bincount(cur, minlength=v).astype(np.float64)
    p_uni_all = (uni + 1.0) / (uni.sum() + v)
    keys, counts = np.unique(prev * v + cur, return_counts=True)
    context = np.bincount(prev, minlength=v).astype(np.float64)
    types = np.bincount(keys // v, minlength=v).astype(np.float64)
    hp = heldout_windows[:, :-1].reshape(-1).astype(np.int64)
    hc = heldout_windows[:, 1:].reshape(-1).astype(np.int64)
    p_uni = p_uni_all[hc]
    hk = hp * v + hc
    if len(keys):
        at = np.minimum(np.searchsorted(keys, hk), len(keys) - 1)
        c_ab = np.where(keys[at] == hk, counts[at], 0).astype(np.float64)
    else:
        c_ab = np.zeros(len(hk))
    c_a, t_a = context[hp], types[hp]
    seen = c_a > 0
    p_bi = np.where(seen, (c_ab + t_a * p_uni) / np.where(seen, c_a + t_a, 1.0), p_uni)
    bits = 1.0 / (utf8_bytes * math.log(2))
    return {"unigram_bpb": float(-np.log(p_uni).sum() * bits), "bigram_bpb": float(-np.log(p_bi).sum() * bits)}


def scale_warnings(model_bpb: dict[str, float], bigram_bpb: dict[str, float], tokens_per_run: int,
                   n_params: int) -> list[str]:
    """What makes this ablation too small to say much: models within MIN_MARGIN_BPB of a variant's bigram
    floor (``model_bpb`` / ``bigram_bpb``: per variant, macro over held-out sets), or too few tokens per
    parameter; each with the budget that would be needed."""
    out = []
    close = {v: model_bpb[v] - bigram_bpb[v] for v in model_bpb if v in bigram_bpb
             and model_bpb[v] - bigram_bpb[v] > -MIN_MARGIN_BPB}
    if close:
        out.append("scale too small: the models of " + ", ".join(
            f"{v} ({d:+.3f} bits/byte against its bigram count model)" for v, d in sorted(close.items()))
            + f" are not {MIN_MARGIN_BPB} bits/byte better than a table of token pair counts; their differences "
            "may be differences of bigram statistics. Train longer (ablate.tokens) or a larger model")
    ratio = tokens_per_run / n_params if n_params else math.inf
    if ratio < MIN_TOKENS_PER_PARAM:
        out.append(f"scale too small: {tokens_per_run:,} training tokens for {n_params:,} parameters "
                   f"({ratio:.2f} per parameter); at least {MIN_TOKENS_PER_PARAM} per parameter "
                   f"(ablate.tokens ≥ {MIN_TOKENS_PER_PARAM * n_params:,}) is needed for a model to learn more than "
                   "the corpus's most frequent patterns")
    return out
