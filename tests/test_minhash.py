"""MinHash and LSH: equal to datasketch, vectorised, and documented S-curve."""

from __future__ import annotations

import gzip
import json

import datasketch
import numpy as np
import pytest
from datasketch.lsh import _optimal_param

from gristmill.dedupe import minhash as mh

from .conftest import shared


@pytest.fixture(scope="module")
def web_texts():
    dolma = shared("web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz")
    with gzip.open(dolma, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    with open(shared("web/oscar2019_hf_dummy_multilingual.jsonl"), encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts


@pytest.mark.parametrize("num_perm,seed,n", [(256, 1, 5), (128, 42, 3)])
def test_signature_equals_datasketch(web_texts, num_perm, seed, n):
    checked = 0
    for text in web_texts[::3]:
        words = mh.shingle_words(text)
        if len(words) < n:
            assert mh.text_signature(text, n, num_perm, seed) is None
            continue
        ref = datasketch.MinHash(num_perm=num_perm, seed=seed, hashfunc=mh.shingle_hash_bytes)
        ref.update_batch(mh.shingles_as_bytes(words, n))
        assert ref.scheme == mh.SCHEME
        assert np.array_equal(mh.text_signature(text, n, num_perm, seed), ref.hashvalues)
        checked += 1
    assert checked > 300


def test_vectorised_words_equal_the_regex_words(web_texts):
    for text in web_texts:
        words = mh.shingle_words(text)
        wh = mh.word_hashes(text)
        assert wh.size == len(words)
        # equal words hash equally, wherever they occur
        first = {}
        for w, h in zip(words, wh.tolist()):
            assert first.setdefault(w, h) == h


def test_normalisation_of_shingles():
    assert mh.shingle_words("Hello, World! STRASSE_x") == ["hello", "world", "strasse", "x"]
    assert np.array_equal(mh.shingle_hashes64("Hello, World!", 2), mh.shingle_hashes64("hello   world", 2))
    assert mh.text_signature("too short", n=5) is None


def test_similar_documents_have_similar_signatures(web_texts):
    text = max(web_texts, key=len)
    words = text.split()
    edited = " ".join(words[:100] + ["inserted", "words"] + words[100:])
    s1, s2 = mh.text_signature(text), mh.text_signature(edited)
    est = float(np.mean(s1 == s2))
    true = mh.jaccard(mh.shingle_hashes64(text, 5), mh.shingle_hashes64(edited, 5))
    assert true > 0.9 and abs(est - true) < 0.08


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_parameters_match_datasketch(threshold):
    assert mh.optimal_params(threshold, 256) == _optimal_param(threshold, 256, 0.5, 0.5)


def test_band_keys_match_datasketch_buckets():
    rng = np.random.RandomState(0)
    s1 = rng.randint(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)
    s2 = s1.copy()
    s2[20] ^= 1  # differs in band 1 only (rows=15)
    b, r = mh.optimal_params(0.8, 256)
    k1, k2 = mh.band_keys(s1, b, r), mh.band_keys(s2, b, r)
    assert len(k1) == b == 17
    assert [x == y for x, y in zip(k1, k2)] == [True] + [False] + [True] * (b - 2)
    assert len(set(k1)) == b


def test_s_curve():
    b, r = mh.optimal_params(0.8, 256)
    p = mh.candidate_probability(np.array([0.5, 0.8, 0.95]), b, r)
    assert p[0] < 0.01 and 0.4 < p[1] < 0.8 and p[2] > 0.99


def test_jaccard():
    a = np.array([1, 2, 3, 4], dtype=np.uint64)
    assert mh.jaccard(a, a) == 1.0
    assert mh.jaccard(a, np.array([3, 4, 5, 6], dtype=np.uint64)) == pytest.approx(2 / 6)


def test_giant_document_signature_in_bounded_chunks():
    hashes = np.arange(300_000, dtype=np.uint32)
    sig = mh.signature(hashes, 64, 1, chunk=1000)
    assert np.array_equal(sig, mh.signature(hashes, 64, 1, chunk=300_000))


def test_shingle_words_keep_combining_marks():
    assert mh.shingle_words("अस्पताल में, Hello_World!") == ["अस्पताल", "में", "hello", "world"]
    assert mh.word_hashes("अस्पताल में, Hello_World!").size == 4


def test_jaccard_of_sorted_unique_sets_equals_the_set_formula():
    """Verification passes np.unique's output and skips the sort (mh.jaccard(sorted_unique=True))."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        n, m = rng.integers(0, 200, 2)
        a = rng.integers(0, 300, n).astype(np.uint64)
        b = rng.integers(0, 300, m).astype(np.uint64)
        sa, sb = set(a.tolist()), set(b.tolist())
        expected = 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)
        assert mh.jaccard(a, b) == expected
        assert mh.jaccard(np.unique(a), np.unique(b), sorted_unique=True) == expected
