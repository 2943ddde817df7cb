"""``langid.threshold: auto``: FineWeb-2's per-language thresholds estimated from the run's own scores."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from gristmill.config import ConfigError, LangIdConfig, load_config
from gristmill.documents import new_document
from gristmill.pipelines import langid
from gristmill.pipelines.clean import Cleaner
from gristmill.pipelines.corpus import run_corpus
from gristmill.pipelines.refresh_index import PublishedCorpus

from .conftest import DEMO_CONFIG, SAMPLE

AUTO = LangIdConfig(threshold="auto", auto_min_documents=10)


def counts_of(scores: dict[str, list[float]]) -> list:
    out: dict = {}
    for lang, xs in scores.items():
        for x in xs:
            key = (lang, langid.score_units(x))
            out[key] = out.get(key, 0) + 1
    return list(out.items())


# --- the rule ------------------------------------------------------------------------------------


def test_thresholds_are_fineweb2s_rule_on_each_languages_scores():
    rng = random.Random(7)
    scores = {
        "de": [round(rng.uniform(0.7, 1.0), 4) for _ in range(501)],  # odd count
        "fr": [round(rng.betavariate(8, 2), 4) for _ in range(400)],  # even count: mean of the middle two
        "eo": [0.99] * 50,  # σ = 0: median 0.99 → capped at 0.9
        "la": [round(rng.uniform(0.0, 0.5), 4) for _ in range(60)],  # median − σ < 0.3 → floored at 0.3
        "sw": [0.2, 0.95, 0.99],  # too few to estimate
    }
    got = langid.auto_thresholds(AUTO, counts_of(scores))
    for lang in ("de", "fr"):
        xs = np.array(scores[lang])
        want = max(0.3, min(0.9, float(np.median(xs)) - float(np.std(xs))))
        assert got[lang]["threshold"] == pytest.approx(want, abs=1e-4)
        assert got[lang]["median"] == pytest.approx(float(np.median(xs)), abs=1e-4)
        assert got[lang]["sigma"] == pytest.approx(float(np.std(xs)), abs=1e-4)
        assert got[lang]["documents"] == len(xs) and got[lang]["source"] == "auto"
    assert got["eo"]["threshold"] == 0.9 and got["la"]["threshold"] == 0.3
    assert got["sw"] == {"documents": 3, "threshold": 0.65, "source": "fallback"}


def test_thresholds_do_not_depend_on_the_order_counts_arrive_in():
    rng = random.Random(3)
    scores = {"en": [round(rng.random(), 4) for _ in range(1000)], "ja": [round(rng.random(), 4) for _ in range(300)]}
    counts = counts_of(scores)
    split = [(k, 1) for k, n in counts for _ in range(n)]  # the same counts in pieces, shuffled
    rng.shuffle(split)
    assert langid.auto_thresholds(AUTO, split) == langid.auto_thresholds(AUTO, counts)


def test_the_cut_drops_under_the_threshold_as_language_id_did_and_restores_the_text():
    cleaner = Cleaner(load_config(None, ["langid.threshold=auto"]))
    text = "The mill by the river was built in 1720 and still grinds grain for the village every week.\n" * 3
    doc = cleaner.process(new_document("a", text, "t"))
    assert doc["lang"] == "en" and doc["lang_pending"]
    assert doc["reason"] == "gopher_repetition:dup_line_frac"  # judged by the later rules meanwhile
    low = langid.cut(dict(doc, signals=dict(doc["signals"])), {"en": min(doc["lang_score"] + 0.01, 0.9)})
    if doc["lang_score"] < 0.9:
        assert low["reason"] == "langid:low_score" and low["text"] == text.strip()
        assert "dup_line_frac" not in low["signals"] and "lang_pending" not in low
    high = langid.cut(dict(doc), {"en": 0.3})
    assert high["reason"] == "gopher_repetition:dup_line_frac"  # its own reason stands
    assert langid.TEXT_AT_LANGID not in high and "lang_pending" not in high


def test_a_language_set_by_hand_is_decided_at_once():
    cleaner = Cleaner(load_config(None, ["langid.threshold=auto", "langid.per_language={en: 0.99}"]))
    doc = cleaner.process(new_document("a", "This is a short English sentence about a mill.", "t"))
    assert "lang_pending" not in doc
    assert doc["reason"] == ("langid:low_score" if doc["lang_score"] < 0.99 else doc["reason"])
    entry = langid.thresholds_entry(load_config(None, ["langid.per_language={en: 0.99}"]).langid, None)
    assert entry["languages"] == {"en": {"threshold": 0.99, "source": "per_language"}}


@pytest.mark.parametrize("override,message", [
    ("langid.threshold=high", "a probability in \\[0, 1\\] or auto"),
    ("langid.threshold=1.5", "a probability in \\[0, 1\\] or auto"),
    ("langid.per_language={de: 1.2}", "langid.per_language.de = 1.2"),
    ("langid.per_language={deu: 0.8}", "'deu' is not a language"),
    ("langid.auto_min_documents=1", "greater than or equal to 2"),
])
def test_bad_thresholds_say_what_to_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


# --- on a real run -------------------------------------------------------------------------------

AUTO_SETTINGS = ["langid.threshold=auto", "langid.auto_min_documents=20"]


def shard_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*.arrow")) if "_work" not in p.parts}


@pytest.fixture(scope="module")
def auto_runs(tmp_path_factory):
    """The sample crawl with threshold: auto, in process and on two processes."""
    cfg = load_config(DEMO_CONFIG, AUTO_SETTINGS)
    outs = {}
    for name, args in (("one", ["--runner", "DirectRunner"]),
                       ("two", ["--runner", "DirectRunner", "--direct_num_workers", "2",
                                "--direct_running_mode", "multi_processing"])):
        out = tmp_path_factory.mktemp(name) / "corpus"
        run_corpus([str(SAMPLE / "*")], str(out), cfg, args, progress=False)
        outs[name] = out
    return outs


@pytest.mark.slow
def test_auto_thresholds_are_the_same_on_any_number_of_workers(auto_runs):
    one, two = auto_runs["one"], auto_runs["two"]
    assert shard_digests(one) == shard_digests(two) != {}
    m1, m2 = (json.loads((o / "manifest.json").read_text()) for o in (one, two))
    assert m1["langid"] == m2["langid"] and m1["counts"] == m2["counts"]


@pytest.mark.slow
def test_auto_thresholds_are_in_the_manifest_and_report_and_applied(auto_runs):
    out = auto_runs["one"]
    m = json.loads((out / "manifest.json").read_text())
    entry = m["langid"]
    assert entry["threshold"] == "auto" and entry["min_documents"] == 20
    estimated = {lang: e for lang, e in entry["languages"].items() if e["source"] == "auto"}
    assert {"en", "de", "fr"} <= set(estimated)
    for e in estimated.values():
        assert 0.3 <= e["threshold"] <= 0.9 and e["documents"] >= 20
        assert e["threshold"] == round(max(0.3, min(0.9, e["median"] - e["sigma"])), 4)
    fallback = [e for e in entry["languages"].values() if e["source"] == "fallback"]
    assert fallback and all(e["documents"] < 20 and e["threshold"] == 0.65 for e in fallback)
    # what was kept scored at least its language's threshold; what language ID dropped, less
    from gristmill.documents import open_corpus

    kept = open_corpus(str(out)).to_table(columns=["lang", "lang_score"]).to_pylist()
    assert kept and all(r["lang_score"] >= entry["languages"][r["lang"]]["threshold"] for r in kept)
    import pyarrow as pa

    low = [r for f in sorted((out / "_rejected" / "reason=langid").glob("*.arrow"))
           for r in pa.ipc.open_file(str(f)).read_all().to_pylist() if r["reason"] == "langid:low_score"]
    assert low and all(r["lang_score"] is None or r["lang_score"] < entry["languages"].get(r["lang"], {}).get(
        "threshold", 1.0) for r in low)
    assert m["counts"]["read"] == m["counts"]["kept"] + sum(m["counts"]["dropped"].values())
    report = (out / "report.html").read_text()
    assert "Language-ID thresholds" in report and "median − σ" in report


@pytest.mark.slow
def test_a_refresh_uses_the_published_thresholds(auto_runs, tmp_path):
    corpus = PublishedCorpus.open(str(auto_runs["one"]))
    cfg = corpus.default_config()
    assert cfg.langid.auto
    out = tmp_path / "v2"
    m = run_corpus([str(SAMPLE / "dolma-cc-main-2019-30.jsonl.gz")], str(out), cfg, ["--runner", "DirectRunner"],
                   progress=False, published=corpus).manifest
    published = json.loads((auto_runs["one"] / "manifest.json").read_text())["langid"]["languages"]
    for lang, e in m["langid"]["languages"].items():
        assert e["threshold"] == published[lang]["threshold"]
        assert e["source"].startswith("published")
    assert set(m["langid"]["languages"]) == set(published)
