"""The quality classifier as a corpus stage, end to end on the sample crawl: every scored document
carries its score, the cut holds per language (threshold and top fraction), the accounting balances,
the pool and one process write the same bytes, and a wrong model stops the run before any work."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from gristmill.config import load_config
from gristmill.pipelines import quality
from gristmill.pipelines.corpus import run_corpus

from .conftest import DEMO_CONFIG, SAMPLE_GLOB, run_cli, tree_bytes

pytestmark = pytest.mark.slow

LANGS = '["en", "es", "it"]'


def run(out: Path, overrides: list[str], beam_args=None):
    cfg = load_config(DEMO_CONFIG, ["clean.quality.enabled=true", *overrides])
    return run_corpus([SAMPLE_GLOB], str(out), cfg, beam_args or [], progress=False).manifest


def table(out: Path, prefix: str) -> pa.Table:
    files = sorted(str(p) for p in out.glob(f"{prefix}/*.arrow"))
    return ds.dataset(files, format="arrow").to_table() if files else pa.table({})


@pytest.fixture(scope="module")
def by_threshold(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "threshold"
    return out, run(out, [f"clean.quality.languages={LANGS}", "clean.quality.threshold=0.05",
                          "clean.quality.per_language={it: 0.5}"])


def test_threshold_keeps_exactly_the_documents_at_or_above_their_languages_cut(by_threshold):
    out, m = by_threshold
    c = m["counts"]
    assert c["read"] == c["kept"] + sum(c["dropped"].values())
    low = c["dropped"]["quality:low_score"]
    q = m["quality"]
    assert q["keep"] == "threshold" and set(q["languages"]) <= {"en", "es", "it"}
    assert sum(v["dropped"] for v in q["languages"].values()) == low > 0
    order = [f["stage"] for f in m["funnel"]]
    assert order.index("quality") == order.index("exact_dedup") - 1
    cut = {"en": 0.05, "es": 0.05, "it": 0.5}
    kept = table(out, "lang=*")
    for lang, score in zip(kept.column("lang").to_pylist(), kept.column("quality_score").to_pylist()):
        if lang in cut:
            assert score is not None and score >= cut[lang] - 1e-6, (lang, score)  # float32 column
        else:
            assert score is None  # not a scored language
    rejected = table(out, "_rejected/reason=quality")
    assert rejected.num_rows == low
    for lang, score, detail in zip(rejected.column("lang").to_pylist(), rejected.column("quality_score").to_pylist(),
                                   rejected.column("detail").to_pylist()):
        assert score < cut[lang] and f"({lang})" in detail
    # the histogram in the manifest counts every scored document
    for v in q["languages"].values():
        assert sum(b["documents"] for b in v["histogram"]) == v["scored"] == v["kept"] + v["dropped"]
    assert "Quality classifier" in (out / "report.html").read_text()


TOP_FRACTION = [f"clean.quality.languages={LANGS}", "clean.quality.top_fraction=0.3",
                "clean.quality.per_language={es: 0.6}"]


@pytest.fixture(scope="module")
def by_fraction(tmp_path_factory):
    """The sample with the top fraction per language kept, read and cleaned on a pool of two processes."""
    out = tmp_path_factory.mktemp("q") / "top"
    return out, run(out, TOP_FRACTION, ["--direct_num_workers", "2"])


def test_top_fraction_keeps_each_languages_best_share(by_fraction):
    top, m = by_fraction
    q = m["quality"]
    assert q["keep"] == "top_fraction"
    # what the quality stage kept: the kept shards and what dedup removed after it
    kept = pa.concat_tables([table(top, p) for p in
                             ("lang=*", "_rejected/reason=exact_dedup", "_rejected/reason=near_dedup")],
                            promote_options="default")
    low = table(top, "_rejected/reason=quality")

    def scores(t, lang):
        return [s for la, s in zip(t.column("lang").to_pylist(), t.column("quality_score").to_pylist())
                if la == lang and s is not None]

    for lang, v in q["languages"].items():
        share = {"es": 0.6}.get(lang, 0.3)
        k, d = scores(kept, lang), scores(low, lang)
        assert len(k) == v["kept"] and len(d) == v["dropped"] and v["kept"] >= share * v["scored"], lang
        assert min(k) >= max(d, default=-1.0), lang  # a cut, not a sample
        # kept beyond the share only because documents of the cut's own bin are all kept
        cut_bin = min(quality.score_bin(s) for s in k)
        assert len(k) - sum(1 for s in k if quality.score_bin(s) == cut_bin) < share * v["scored"], lang


def test_the_pool_and_one_process_write_the_same_bytes(by_fraction, tmp_path):
    pool, _ = by_fraction
    run(tmp_path / "one", TOP_FRACTION, ["--direct_num_workers", "1"])

    assert tree_bytes(pool) == tree_bytes(tmp_path / "one")


def test_a_model_that_is_not_a_quality_classifier_stops_the_run_before_any_work(tmp_path):
    from gristmill.pipelines.langid import default_model_path

    out = tmp_path / "corpus"
    r = run_cli("corpus", "--input", SAMPLE_GLOB, "--output", str(out), "--config", str(DEMO_CONFIG),
                "--set", "clean.quality.enabled=true", "--set", f"clean.quality.model={default_model_path()}")
    assert r.returncode != 0
    assert "not a quality classifier" in r.stderr and "gristmill quality train" in r.stderr
    assert not out.exists()


def test_a_default_run_records_no_quality_section(tmp_path):
    cfg = load_config(DEMO_CONFIG)
    assert "quality" not in cfg.model_dump(mode="json")["clean"]
    on = load_config(DEMO_CONFIG, ["clean.quality.enabled=true"])
    assert on.model_dump(mode="json")["clean"]["quality"]["enabled"] is True
    assert on.fingerprint() != cfg.fingerprint()


def test_a_quality_bucket_of_the_corpus_is_tokenized_alone(by_threshold, demo_tokenizer, tmp_path):
    """tokenize.select: one quality bucket of one language, as a mixture source would take it."""
    from gristmill.pipelines.tokenize import run_tokenize

    out, m = by_threshold
    kept = table(out, "lang=*")
    rows = zip(kept.column("lang").to_pylist(), kept.column("quality_score").to_pylist())
    expected = sum(lang == "en" and score is not None and 0.2 <= score < 0.9 for lang, score in rows)
    assert 0 < expected < m["counts"]["kept"]
    cfg = load_config(DEMO_CONFIG, ["tokenize.seq_len=64", "tokenize.select.langs=en",
                                    "tokenize.select.min_quality_score=0.2", "tokenize.select.max_quality_score=0.9"])
    tm = run_tokenize(str(out), str(demo_tokenizer), str(tmp_path / "k"), cfg.tokenize, ["--runner", "DirectRunner"])
    tm = tm.manifest
    assert tm["splits"]["train"]["documents"] + tm["splits"]["val"]["documents"] == expected
    assert tm["select"]["documents_selected"] == expected
    assert tm["select"]["documents_skipped"] == m["counts"]["kept"] - expected
    assert set(tm["splits"]["train"]["tokens_by_lang"]) == {"en"}
