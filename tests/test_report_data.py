"""What the corpus pipeline collects for report.html (pipelines/report.py): counter keys, histogram buckets,
the bounded and deterministic sample of dropped documents, redacted snippets, the clean steps' accounting,
and the page made from them (hostile text escaped, old manifests still rendered)."""

from __future__ import annotations

import json
import random

import apache_beam as beam

from gristmill.config import GristmillConfig, PiiConfig
from gristmill.documents import new_document
from gristmill.pipelines import report
from gristmill.pipelines.clean import Cleaner, step_order
from gristmill.pipelines.corpus import _report_samples
from gristmill.pipelines.runner import read_stats

ENGLISH = "\n".join([
    "The committee met on Tuesday to discuss the new budget for the public library in the old town.",
    "Members agreed that the reading rooms should stay open later in the evening during the winter.",
    "They asked the director to report on the cost of hiring two more people for the children's section.",
    "A local teacher said that her pupils would use the library more if it had a quiet room for homework.",
    "The treasurer warned that the heating bill had gone up by a third since the last year.",
    "Several residents wrote letters in support of the plan, and one of them offered to volunteer on weekends.",
    "The proposal will be put to a vote at the next meeting, which is planned for the first week of March.",
    "Until then, the current opening hours remain in place and the café on the ground floor stays closed.",
])


def _doc(i: int, reason: str | None = None, lang: str | None = "en", text: str = "some text", **extra) -> dict:
    d = new_document(f"doc-{i:03d}", text, "crawl/a.jsonl", f"https://example.org/{i}")
    d.update(reason=reason, lang=lang, lang_score=0.93 if lang else None, **extra)
    return d


# --- buckets and counter keys ---------------------------------------------------------------------------------


def test_buckets_have_their_edges():
    assert [report.length_bucket(n) for n in (0, 99, 100, 199, 200, 999_999_999)] == [0, 0, 100, 100, 200, 200_000]
    assert [report.score_bucket(x) for x in (0.0, 0.049, 0.05, 0.5, 0.999, 1.0)] == [0, 0, 1, 10, 19, 19]
    assert [report.cluster_bucket(n) for n in (2, 3, 4, 5, 8, 9, 16, 17)] == [2, 3, 4, 5, 5, 9, 9, 17]


def test_report_keys_of_a_kept_and_a_dropped_document():
    kept = _doc(1, text="x" * 150, cluster_size=3, cluster_id="doc-001")
    assert sorted(report.report_keys(kept)) == sorted([
        "file\x00kept\x00crawl/a.jsonl", "length\x00kept\x00100", "score\x00kept\x0018", "cluster\x003"])
    dropped = _doc(2, "gopher_quality:short_doc", text="x" * 20)
    assert sorted(report.report_keys(dropped)) == sorted([
        "file\x00dropped\x00crawl/a.jsonl", "lang_rule\x00en\x00gopher_quality:short_doc",
        "length\x00dropped\x000", "score\x00dropped\x0018"])
    before_langid = _doc(3, "normalize:empty", lang=None, text="")
    assert "lang_rule\x00\x00normalize:empty" in set(report.report_keys(before_langid))
    assert not any(k.startswith("score") for k in report.report_keys(before_langid))
    # a near duplicate that was dropped counts as dropped, not as a cluster
    assert not any(k.startswith("cluster") for k in report.report_keys(
        _doc(4, "near_dedup:duplicate", cluster_size=3, cluster_id="doc-001")))


def test_report_entry_turns_counters_into_histograms_and_the_language_table():
    counts = {"length\x00kept\x00100": 4, "length\x00dropped\x000": 2, "score\x00kept\x0019": 4,
              "lang_rule\x00en\x00langid:low_score": 3, "lang_rule\x00\x00normalize:empty": 1,
              "cluster\x002": 5, "cluster\x005": 1, "file\x00kept\x00a": 4, "read": 99}
    e = report.report_entry(counts, {}, [])
    assert e["length_chars"]["kept"][1] == 4 and sum(e["length_chars"]["kept"]) == 4
    assert e["length_chars"]["dropped"][0] == 2 and sum(e["length_chars"]["dropped"]) == 2
    assert e["lang_score"]["kept"][19] == 4 and len(e["lang_score"]["edges"]) == report.SCORE_BUCKETS
    assert e["dropped_by_language"] == {"": {"normalize:empty": 1}, "en": {"langid:low_score": 3}}
    sizes = e["near_dup_clusters"]["sizes"]
    assert [(b["from"], b["to"], b["clusters"]) for b in sizes] == [(2, 2, 5), (3, 3, 0), (4, 4, 0), (5, 8, 1)]
    assert report.file_counts(counts, "a") == (4, 0)


def test_measured_value_names_what_the_rule_measured():
    d = _doc(1, "gopher_quality:alpha_words_low")
    d["signals"] = {"n_words": 80, "mean_word_length": 4.1, "alpha_words_frac": 0.41}
    assert report.measured_value(d) == {"name": "alpha_words_frac", "value": 0.41}
    assert report.measured_value(_doc(2, "langid:low_score")) == {"name": "lang_score", "value": 0.93}
    assert report.measured_value(_doc(3, "near_dedup:duplicate", cluster_size=7)) == {"name": "cluster_size",
                                                                                      "value": 7}
    assert report.measured_value(_doc(4, "exact_dedup:duplicate")) is None  # its detail is shown instead


# --- snippets: short, one line, redacted --------------------------------------------------------------------------


def test_snippets_are_short_single_line_and_redacted():
    text = ("Write to jane.doe@example.com or call\n\nserver 8.8.8.8 (not 10.0.0.1); login at "
            "https://bob:hunter2@intranet.example.org/x \x00 and \udcff. ") + "filler " * 200
    s = report.snippet(text)
    assert len(s) <= report.SNIPPET_CHARS and s.endswith("…")
    assert "jane.doe@example.com" not in s and "<EMAIL>" in s
    assert "8.8.8.8" not in s and "<IP_ADDRESS>" in s and "10.0.0.1" in s  # a private address is no one's
    assert "hunter2" not in s and "\n" not in s and "\x00" not in s
    s.encode("utf-8")  # no lone surrogate left: the manifest and page are UTF-8
    # redacted even where the run publishes unredacted text (clean.pii off)
    assert "jane.doe@example.com" not in report.snippet(text, PiiConfig(enabled=False, emails=False))


def test_finish_samples_orders_by_rank_and_leaves_no_text():
    entries = [report.sample_entry(_doc(i, "c4_lines:curly_bracket", text=f"mail me at x{i}@example.com " * 50))
               for i in range(5)]
    reason, examples = report.finish_samples(("c4_lines:curly_bracket", [v for _, v in entries]))
    assert reason == "c4_lines:curly_bracket" and [e["rank"] for e in examples] == sorted(e["rank"] for e in examples)
    assert all("text" not in e and "@example.com" not in e["snippet"] for e in examples)
    assert all(len(e["snippet"]) <= report.SNIPPET_CHARS for e in examples)


# --- the sample: bounded per reason, the same whatever the order --------------------------------------------------


def _sample_with_beam(docs: list[dict], out) -> dict:
    with beam.Pipeline(runner="DirectRunner") as p:
        _report_samples(p | beam.Create(docs), str(out), GristmillConfig(), "report_samples")
    return report.merge_samples(read_stats(str(out), "report_samples"))


def test_the_beam_sample_is_bounded_per_reason_and_independent_of_arrival_order(tmp_path):
    docs = [_doc(i, "gopher_quality:short_doc" if i % 3 else "langid:low_score") for i in range(60)]
    first = _sample_with_beam(docs, tmp_path / "a")
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    assert _sample_with_beam(shuffled, tmp_path / "b") == first
    assert set(first) == {"gopher_quality:short_doc", "langid:low_score"}
    for reason, examples in first.items():
        expected = sorted((report.sample_rank(d), d["id"]) for d in docs if d["reason"] == reason)
        assert [e["id"] for e in examples] == [i for _, i in expected[:report.SAMPLES_PER_REASON]]


def test_merging_the_samples_of_two_pipelines_keeps_the_smallest_ranks():
    def part(ids):
        return [("r", [{"rank": f"{i:02d}", "id": f"d{i}", "source": "s"} for i in ids])]

    merged = report.merge_samples(part([5, 1, 9]), part([0, 7]))
    assert [e["id"] for e in merged["r"]] == ["d0", "d1", "d5"] and "rank" not in merged["r"][0]


# --- clusters ------------------------------------------------------------------------------------------------------


def test_cluster_summary_lists_the_kept_member_first():
    members = [report.cluster_member(_doc(i, None if i == 4 else "near_dedup:duplicate", cluster_id="c",
                                          cluster_size=6)) for i in range(6)]
    assert {k for k, _ in members} == {"c"}
    summary = report.cluster_summary(("c", [v for _, v in members]))
    assert summary["size"] == 6 and summary["members"][0]["id"] == "doc-004"
    assert summary["members"][0]["url"] == "https://example.org/4" and len(summary["members"]) == 6
    big, small = {"size": 9, "cluster_id": "z"}, {"size": 3, "cluster_id": "a"}
    assert sorted([small, big], key=report.cluster_order) == [big, small]


# --- the clean steps ----------------------------------------------------------------------------------------------


def test_the_cleaner_counts_and_times_each_step():
    cleaner = Cleaner(GristmillConfig())
    kept = cleaner.process(new_document("a", ENGLISH, "s"))
    empty = cleaner.process(new_document("b", " \n ", "s"))
    assert kept["reason"] is None and empty["reason"] == "normalize:empty"
    steps = cleaner.take_steps()
    assert steps["normalize"][:2] == [2, 1]  # both documents normalised, the empty one dropped there
    assert steps["langid"][:2] == [1, 0] and steps["pii"][:2] == [1, 0]
    assert all(s[2] >= 0 for s in steps.values()) and "gopher_quality" in steps
    assert cleaner.take_steps() == {}  # taken: the next file starts from zero


def test_the_step_order_is_the_order_the_cleaner_runs_them():
    """One statement of the chain's order (clean.step_order, from the config's stages): a document that
    passes every step meets them in that order, holdout and a custom filter included."""
    cfg = GristmillConfig.model_validate({
        "holdout": {"fraction": 0.001},
        "clean": {"url_blocklist": {"domains": ["blocked.example"]},
                  "custom_filters": [{"name": "mine", "function": "tests.extension_filters:drop_keyword",
                                      "params": {"words": ["zzzz"]}}]}})
    cleaner = Cleaner(cfg)
    doc = cleaner.process(new_document("a", ENGLISH, "s", "https://example.org/"))
    assert doc["reason"] is None
    order = step_order(cfg)
    assert list(cleaner.take_steps()) == list(order)
    assert order[:3] == ("holdout", "normalize", "url_blocklist") and order[-2:] == ("mine", "pii")


def test_clean_steps_add_up_files_in_the_chain_order():
    per_file = [{"pii": [2, 0, 0.5], "normalize": [3, 1, 1.0], "mine": [2, 0, 0.25]},
                {"normalize": [4, 0, 2.0], "langid": [4, 1, 1.0], "unknown": [1, 0, 0.0]}]
    steps = report.clean_steps(per_file, ("normalize", "langid", "mine", "pii"))
    assert [s["step"] for s in steps] == ["normalize", "langid", "mine", "pii", "unknown"]
    assert steps[0] == {"step": "normalize", "documents": 7, "dropped": 1, "seconds": 3.0}


# --- the page -----------------------------------------------------------------------------------------------------


def _manifest_with_report() -> dict:
    hostile = "<script>alert(1)</script>"
    examples = {"c4_lines:curly_bracket": [{"id": f"id{hostile}", "source": "s", "url": f"javascript:{hostile}",
                                            "lang": "en", "measured": None, "detail": hostile, "chars": 30,
                                            "snippet": f"text {hostile}"}]}
    counts = {"lang_rule\x00en\x00c4_lines:curly_bracket": 1, "length\x00kept\x00100": 1,
              "length\x00dropped\x000": 1, "cluster\x002": 1}
    clusters = [{"cluster_id": hostile, "size": 2, "members": [{"id": "k", "url": hostile}, {"id": "m", "url": None}]}]
    return {"counts": {"read": 2, "kept": 1, "input_files": 1, "dropped": {"c4_lines:curly_bracket": 1}},
            "funnel": [{"stage": "c4_lines", "in": 2, "dropped": 1, "out": 1}],
            "clean_steps": [{"step": "c4_lines", "documents": 2, "dropped": 1}],
            "languages": {"en": {"kept": 1, "dropped": 1}}, "shards": [], "config_sha256": "0" * 64,
            "inputs": [{"source": hostile, "format": "jsonl", "size": 9, "documents": 2, "error": None, "kept": 1,
                        "dropped": 1}],
            "report": report.report_entry(counts, examples, clusters)}


def test_every_string_from_a_document_is_escaped():
    page = report.render_html(_manifest_with_report())
    assert "<script" not in page and page.count("&lt;script&gt;") >= 6


def test_every_section_is_on_the_page_and_an_old_manifest_still_renders():
    page = report.render_html(_manifest_with_report())
    for anchor, title in report.SECTIONS:
        assert f'<section id="{anchor}">\n<h2>{title}</h2>' in page
    assert "(not recorded in this manifest)" not in page
    old = _manifest_with_report()
    del old["report"], old["clean_steps"]
    for f in old["inputs"]:
        del f["kept"], f["dropped"]
    page = report.render_html(old)
    assert page.count("(not recorded in this manifest)") == 5


def test_times_show_when_the_manifest_has_them_and_are_all_that_without_timings_removes():
    m = _manifest_with_report()
    untimed = report.render_html(m)
    assert "µs per document" not in untimed and "write.timings: false" in untimed
    m["timings"] = {"seconds": 12.25, "clean_steps": [{"step": "c4_lines", "seconds": 0.5}]}
    page = report.render_html(m)
    assert "µs per document" in page and "<td><!--timing-->250,000<!--/timing--></td>" in page
    assert "<!--timing--> in 12.2 s<!--/timing-->;" in page
    m["timings"] = {"seconds": 99.0, "clean_steps": [{"step": "c4_lines", "seconds": 7.0}]}
    other = report.render_html(m)
    assert other != page
    assert report.without_timings("report.html", other.encode()) == report.without_timings("x/report.html",
                                                                                          page.encode())
    # what is left is the page with its time columns, without numbers
    stripped = report.without_timings("report.html", page.encode()).decode()
    assert "µs per document" in stripped and "250,000" not in stripped and "12.2 s" not in stripped


def test_without_timings_drops_the_manifests_timings_only():
    a = {"counts": {"read": 1}, "timings": {"seconds": 1.0, "clean_steps": []}}
    b = {"timings": {"seconds": 2.0, "clean_steps": []}, "counts": {"read": 1}}
    ja, jb = json.dumps(a).encode(), json.dumps(b, indent=1).encode()
    assert report.without_timings("manifest.json", ja) == report.without_timings("out/manifest.json", jb)
    assert report.without_timings("manifest.json", ja) != report.without_timings(
        "manifest.json", json.dumps({"counts": {"read": 2}}).encode())
    assert report.without_timings("shard.arrow", ja) == ja
