"""Scoring with the quality classifier and the per-language cut: pure functions (the corpus pipeline
wraps them; tests/test_corpus_e2e.py runs them end to end)."""

from __future__ import annotations

import numpy as np
import pytest

from gristmill.pipelines import quality as q
from gristmill.pipelines import quality_model as qm
from tests.conftest import shared


def test_the_shipped_model_scores_books_above_crawl_text():
    scorer = q.QualityScorer()
    book = list(qm.read_documents(str(shared("text/pg2701_moby_dick.txt"))))[100:130]
    web = [t for t in qm.read_documents(str(shared("web/dolma_ccnet_cc_en_head-0091.jsonl")))]
    b = np.array([scorer.score(t) for t in book])
    w = np.array([scorer.score(t) for t in web])
    assert np.all((b >= 0) & (b <= 1)) and np.all((w >= 0) & (w <= 1))
    assert np.median(b) > 0.5 > np.median(w)
    assert scorer.score("") == 0.0


def test_scores_equal_the_python_model_of_the_same_file(tmp_path):
    # the model file as fastText reads it and as gristmill trained it agree (the classifier's own
    # parity test is in test_quality_model.py; this checks QualityScorer's preparation and +1e-5)
    pos = list(qm.read_documents(str(shared("text/pg84_frankenstein.txt"))))[:80]
    neg = [t for t in qm.read_documents(str(shared("web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz")))
           if t.strip()][:80]
    params = qm.TrainParams(bucket=2048, epochs=2, max_words=50)
    model = qm.train([qm.prepare(t, 50) for t in pos + neg], [1] * 80 + [0] * 80, params)
    qm.write_fasttext(tmp_path / "model.bin", model.vocab, model.input_matrix, model.output_matrix, params)
    (tmp_path / "metadata.json").write_text('{"params": {"max_words": 50}}')
    scorer = q.QualityScorer(str(tmp_path / "model.bin"))
    assert scorer.max_words == 50
    for text in pos[:5] + neg[:5]:
        assert scorer.score(text) == pytest.approx(model.positive_probability(qm.prepare(text, 50)), abs=2e-6)


def test_a_model_with_other_labels_or_no_model_is_refused(tmp_path):
    from gristmill.pipelines.langid import default_model_path

    with pytest.raises(q.QualityError, match="not a quality classifier"):
        q.QualityScorer(default_model_path())
    with pytest.raises(q.QualityError, match="quality model not found"):
        q.QualityScorer(str(tmp_path / "missing.bin"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(qm.QualityModelError, match="not a fastText model"):
        q.QualityScorer(str(junk))


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.3, 0.5, 0.9])
def test_top_fraction_keeps_at_least_the_fraction_and_at_most_one_bin_more(fraction):
    rng = np.random.default_rng(0)
    # crawl-like: most scores tiny, a few high
    scores = np.concatenate([rng.beta(0.3, 30, 9_000), rng.beta(5, 2, 1_000)]).tolist()
    hist = q.histogram(scores)
    assert hist.sum() == len(scores)
    cut = q.top_fraction_cut(hist, fraction)
    kept = sum(q.keep_by_bin(s, cut) for s in scores)
    assert kept >= fraction * len(scores)
    assert kept - hist[cut] < fraction * len(scores)  # without the cut's own bin it would be too few
    # merging partial histograms in any order gives the same cut: deterministic on any runner
    parts = [q.histogram(scores[i::7]) for i in range(7)]
    assert q.top_fraction_cut(sum(parts[::-1]), fraction) == cut


def test_cut_edges():
    assert q.top_fraction_cut(np.zeros(q.BINS, dtype=np.int64), 0.5) == 0
    assert q.top_fraction_cut(q.histogram([0.2, 0.9]), 1.0) == 0
    assert q.score_bin(0.0) == 0 and q.score_bin(1.0) == q.BINS - 1 and q.score_bin(0.5) == q.BINS // 2
    summary = q.histogram_summary(q.histogram([0.0, 0.5, 0.999]))
    assert len(summary) == 20 and sum(b["documents"] for b in summary) == 3 and summary[0]["from"] == 0.0
