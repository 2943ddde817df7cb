"""Decontamination (pipelines/decontaminate.py): the pure n-gram functions, the checks of the
evaluation files, and real GSM8K test items planted into real web documents of the sample crawl."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from gristmill.config import DecontaminateConfig, load_config
from gristmill.documents import new_document, open_corpus
from gristmill.pipelines.clean import Cleaner
from gristmill.pipelines.corpus import run_corpus
from gristmill.pipelines.decontaminate import (
    REASON,
    DecontaminationError,
    document_ngrams,
    evaluation_texts,
    load_evaluation_sets,
    ngram_hashes,
    text_ngrams,
    words,
)

from .conftest import DEMO_CONFIG, SAMPLE, run_cli, shared, tree_bytes

GSM8K_TEST = "sft/gsm8k_test.jsonl"


# --- pure functions ------------------------------------------------------------------------------


def _prefix(text: str, n: int) -> str:
    """The longest run of ``text``'s first whitespace-separated tokens with at most ``n`` words."""
    tokens = text.split()
    k = max(k for k in range(len(tokens) + 1) if len(words(" ".join(tokens[:k]))) <= n)
    return " ".join(tokens[:k])


def test_words_ignore_case_punctuation_and_spacing():
    assert words("Janet’s ducks lay 16 eggs,\n  per DAY!") == ["janet", "s", "ducks", "lay", "16", "eggs", "per", "day"]
    assert words("ﬁne Ｃafé") == words("fine café") == ["fine", "café"]


def test_a_shared_13_gram_matches_and_12_words_do_not():
    question = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
                "muffins for her friends every day with four.")
    ev, whole = text_ngrams(question, 13, 8)
    assert whole is None and len(ev) == len(words(question)) - 12
    thirteen, twelve = _prefix(question, 13), _prefix(question, 12)
    assert len(words(thirteen)) == 13 and len(words(twelve)) == 12
    assert document_ngrams(f"Some page text. {thirteen}. More text here.", 13) & ev
    assert not document_ngrams(f"Some page text. {twelve}, and more text that goes on here.", 13) & ev


def test_short_texts_are_matched_whole_or_ignored():
    hashes, whole = text_ngrams("How many apples does Tom have left now?", 13, 8)
    assert whole == 8 and len(hashes) == 1
    assert document_ngrams("He asked: how many apples does Tom have left now? Nobody knew.", 13, (8,)) & hashes
    assert not document_ngrams("He asked: how many apples does Tom have left now? Nobody knew.", 13) & hashes
    assert text_ngrams("18 dollars", 13, 8) == (set(), None)  # too short: would match innocent pages


def test_ngram_hashes_are_stable_and_windowed():
    ws = "a b c d e".split()
    assert len(ngram_hashes(ws, 3)) == 3 and ngram_hashes(ws, 6) == set()
    assert ngram_hashes(ws, 3) == ngram_hashes(list(ws), 3)  # not Python's salted hash


def test_evaluation_texts_every_string_or_the_named_fields():
    rec = {"question": "Q text", "answer": "A text", "meta": {"choices": ["x", "y"], "n": 3}, "blank": " "}
    assert evaluation_texts(rec, ()) == [("question", "Q text"), ("answer", "A text"), ("meta.choices.0", "x"),
                                         ("meta.choices.1", "y")]
    assert evaluation_texts(rec, ("answer", "meta.choices")) == [("answer", "A text"), ("meta.choices.0", "x"),
                                                                 ("meta.choices.1", "y")]
    assert evaluation_texts(rec, ("nope",)) == []


# --- the evaluation files are checked before any work -------------------------------------------


def test_missing_file_is_an_error_naming_it(tmp_path):
    cfg = DecontaminateConfig(files=(str(tmp_path / "gone.jsonl"),))
    with pytest.raises(DecontaminationError, match=r"decontaminate\.files: .*gone\.jsonl not found"):
        load_evaluation_sets(cfg)


def test_fields_without_text_is_an_error_naming_file_and_key(tmp_path):
    p = tmp_path / "eval.jsonl"
    p.write_text('{"question": "What is the capital of France and why is it there?", "answer": "Paris"}\n')
    with pytest.raises(DecontaminationError, match=r"eval\.jsonl has no evaluation text in the field\(s\) "
                                                   r"\['problem'\] \(decontaminate\.fields\)"):
        load_evaluation_sets(DecontaminateConfig(files=(str(p),), fields=("problem",)))
    p.write_text('{"q": "hi"}\n{"q": "two words"}\n')
    with pytest.raises(DecontaminationError, match="shorter than decontaminate.min_words"):
        load_evaluation_sets(DecontaminateConfig(files=(str(p),)))
    p.write_text('{"q": "fine"}\nnot json\n')
    with pytest.raises(DecontaminationError, match=r"eval\.jsonl line 2 is not JSON"):
        load_evaluation_sets(DecontaminateConfig(files=(str(p),)))


def test_run_refuses_bad_evaluation_files_before_writing_anything(tmp_path):
    cfg = load_config(DEMO_CONFIG, [f"decontaminate.files=[{tmp_path / 'gone.jsonl'}]"])
    with pytest.raises(DecontaminationError, match="gone.jsonl not found"):
        run_corpus([str(SAMPLE / "ccnet-cc-main-2020-16.parquet")], str(tmp_path / "out"), cfg,
                   ["--runner", "DirectRunner"], progress=False)
    assert not (tmp_path / "out").exists()
    r = run_cli("corpus", "--input", SAMPLE / "ccnet-cc-main-2020-16.parquet", "--output", tmp_path / "out",
                "--set", f"decontaminate.files=[{tmp_path / 'gone.jsonl'}]")
    assert r.returncode == 2 and "decontaminate.files" in r.stderr and "gone.jsonl not found" in r.stderr
    assert not (tmp_path / "out").exists()


def test_gsm8k_counts():
    ev = load_evaluation_sets(DecontaminateConfig(files=(str(shared(GSM8K_TEST)),), fields=("question", "answer")))
    f, = ev.files
    assert (f["items_with_text"], f["texts"]) == (1319, 2638)
    assert f["ngrams"] > 100_000 and f["texts_too_short_ignored"] == 0


# --- end to end: GSM8K test items planted into web documents -------------------------------------


def _web_documents(cfg, n: int) -> list[dict]:
    """The first ``n`` records of the sample's Dolma crawl that the cleaning chain keeps as English,
    with distinct openings (no two are duplicates of each other)."""
    cleaner, out, seen = Cleaner(cfg), [], set()
    with gzip.open(SAMPLE / "dolma-cc-main-2019-30.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            doc = cleaner.process(new_document(rec["id"], rec["text"], "x"))
            if doc["reason"] or doc["lang"] != "en" or rec["text"][:200] in seen or len(rec["text"]) > 20_000:
                continue
            seen.add(rec["text"][:200])
            out.append({"id": rec["id"], "text": rec["text"]})
            if len(out) == n:
                return out
    raise AssertionError(f"the sample has fewer than {n} kept English documents")


def _plant(text: str, inserted: str) -> str:
    lines = text.split("\n")
    at = len(lines) // 2
    return "\n".join(lines[:at] + [inserted] + lines[at:])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    gsm8k = shared(GSM8K_TEST)
    items = [json.loads(line) for line in gsm8k.read_text().splitlines()]
    cfg = load_config(DEMO_CONFIG)
    docs = sorted(_web_documents(cfg, 24), key=lambda d: -len(d["text"]))  # plant into the longest
    expect: dict[str, tuple[int, str] | None] = {}  # document id -> (item, field) expected to match, or None
    for k, i in enumerate((3, 250, 777, 1318)):  # whole questions
        docs[k]["text"] = _plant(docs[k]["text"], items[i]["question"])
        expect[docs[k]["id"]] = (i, "question")
    for k, i in ((4, 42), (5, 900)):  # an answer's worked solution (its lines as on a homework-help page)
        docs[k]["text"] = _plant(docs[k]["text"], items[i]["answer"])
        expect[docs[k]["id"]] = (i, "answer")
    for k, i in ((6, 10), (7, 500)):  # the first 12 words of a question only: one short of an n-gram
        assert len(words(_prefix(items[i]["question"], 12))) == 12
        docs[k]["text"] = _plant(docs[k]["text"], _prefix(items[i]["question"], 12) + ".")
        expect[docs[k]["id"]] = None
    # phrases every GSM8K reader knows, in their own sentences
    docs[8]["text"] = _plant(docs[8]["text"], "How much money does she have left? That is what we asked.")
    docs[9]["text"] = _plant(docs[9]["text"], "How many more minutes does it take him every day to get there?")
    expect.update({docs[8]["id"]: None, docs[9]["id"]: None})
    cleaner = Cleaner(cfg)
    for d in docs:  # the planted documents still pass every cleaning rule: only decontamination can drop them
        assert not cleaner.process(new_document(d["id"], d["text"], "x"))["reason"], d["id"]
    crawl = tmp_path_factory.mktemp("crawl")
    (crawl / "web.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path_factory.mktemp("decontaminated") / "corpus"
    cfg = load_config(DEMO_CONFIG, [f"decontaminate.files=[{gsm8k}]", "decontaminate.fields=[question, answer]"])
    m = run_corpus([str(crawl / "web.jsonl")], str(out), cfg, ["--runner", "DirectRunner"], progress=False).manifest
    return crawl, out, m, expect, str(gsm8k)


@pytest.mark.slow
def test_planted_gsm8k_items_are_removed_and_short_phrases_kept(planted):
    _, out, m, expect, gsm8k = planted
    rows = {r["id"]: r for r in open_corpus(str(out), rejected=True).to_table().to_pylist()}
    kept = {r["id"] for r in open_corpus(str(out)).to_table().to_pylist()}
    contaminated = {i for i, r in rows.items() if r["reason"] == REASON}
    assert contaminated == {i for i, e in expect.items() if e is not None}
    for doc_id in contaminated:
        item, fld = expect[doc_id]
        assert json.loads(rows[doc_id]["detail"]) == {"eval_file": gsm8k, "item": item, "field": fld}
    assert {i for i, e in expect.items() if e is None} <= kept
    assert len(kept) + len(rows) == 24


@pytest.mark.slow
def test_decontamination_is_accounted_for(planted):
    _, _, m, _, gsm8k = planted
    c = m["counts"]
    assert c["dropped"][REASON] == 6 and c["read"] == c["kept"] + sum(c["dropped"].values()) == 24
    stages = [row["stage"] for row in m["funnel"]]
    assert stages.index("c4_lines") < stages.index("decontaminate") < stages.index("exact_dedup")
    assert next(r for r in m["funnel"] if r["stage"] == "decontaminate")["dropped"] == 6
    d = m["decontamination"]
    assert (d["ngram"], d["documents_dropped"], d["files"][0]["path"]) == (13, 6, gsm8k)
    assert m["config"]["decontaminate"]["fields"] == ["question", "answer"]


@pytest.mark.slow
def test_dask_runner_decontaminates_the_same_bytes(planted, tmp_path):
    """The joins are plain CoGroupByKeys: the DaskRunner (no side inputs) writes the same bytes."""
    from distributed import Client, LocalCluster

    crawl, out, m, _, gsm8k = planted
    cfg = load_config(DEMO_CONFIG, [f"decontaminate.files=[{gsm8k}]", "decontaminate.fields=[question, answer]"])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        run_corpus([str(crawl / "web.jsonl")], str(tmp_path / "dask"), cfg,
                   ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner",
                    "--dask_client_address", cluster.scheduler_address], progress=False)

    got = tree_bytes(tmp_path / "dask")
    assert Counter(k.split("/")[0] for k in got)["_rejected"] >= 1
    assert got == tree_bytes(out)
