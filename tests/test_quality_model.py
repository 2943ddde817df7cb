"""The quality classifier: fastText-format model files that fastText itself scores identically,
deterministic training, held-out metrics, and clear errors for unusable training data."""

from __future__ import annotations

import json
import subprocess
import sys

import fasttext
import numpy as np
import pytest

from gristmill.pipelines import quality_model as qm
from tests.conftest import shared

# a fastText predict adds 1e-5 to each probability (log(p + 1e-5), then exp)
FT_EPS = 1e-5


def _books_and_web(limit_web: int = 120):
    pos = list(qm.read_documents(str(shared("text/pg84_frankenstein.txt"))))[:120]
    neg = [t for t in qm.read_documents(str(shared("web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz")))
           if t.strip()][:limit_web]
    return pos, neg


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    pos, neg = _books_and_web()
    lines = [qm.prepare(t, 300) for t in pos + neg]
    labels = [1] * len(pos) + [0] * len(neg)
    params = qm.TrainParams(bucket=4096, epochs=2, min_count=2)
    model = qm.train(lines, labels, params)
    path = tmp_path_factory.mktemp("qm") / "model.bin"
    qm.write_fasttext(path, model.vocab, model.input_matrix, model.output_matrix, params)
    return model, path, lines


def test_fasttext_scores_the_written_model_exactly_as_gristmill_does(small_model):
    # fastText's C++ tokenises and hashes the text itself: equal probabilities mean equal features
    model, path, lines = small_model
    ft = fasttext.load_model(str(path))
    texts = lines[:40] + [
        qm.prepare("Ünïcödé wörds, 日本語のテキスト and ЗАГЛАВНЫЕ буквы; émigré naïve café", 300),
        "unseenword anotherunseenword the",  # unknown words still form bigrams with known ones
        qm.prepare("a\tb\x0bc\x0cd\re e\u00a0f\u2003g", 300),  # fastText splits on ASCII space only
    ]
    worst = 0.0
    for text in texts:
        labels, probs = ft.predict(text, k=2)
        p = dict(zip(labels, probs))["__label__hq"]
        worst = max(worst, abs(model.positive_probability(text) + FT_EPS - p))
    assert worst < 1e-6


def test_header_names_the_labels_and_rejects_other_files(small_model, tmp_path):
    _, path, _ = small_model
    head = qm.read_fasttext_header(path)
    assert head["labels"] == ["__label__hq", "__label__cc"] and head["supervised"] and head["bucket"] == 4096
    from gristmill.pipelines.langid import default_model_path

    lid = qm.read_fasttext_header(default_model_path())  # lid.176: quantized, other labels
    assert len(lid["labels"]) == 176 and "__label__en" in lid["labels"]
    bad = tmp_path / "not-a-model.bin"
    bad.write_bytes(b"PK\x03\x04 zip, not fastText")
    with pytest.raises(qm.QualityModelError, match="not a fastText model"):
        qm.read_fasttext_header(bad)


def test_fnv1a_sign_extends_bytes_as_fasttext_does():
    # FNV-1a of "a": standard 32-bit value; for bytes >= 0x80 the C++ code xors the sign-extended byte
    assert qm.fnv1a("a") == 0xE40C292C
    plain = 2166136261
    for b in "é".encode():
        plain = ((plain ^ b) * 16777619) & 0xFFFFFFFF
    assert qm.fnv1a("é") != plain


def test_training_is_deterministic_for_a_seed(tmp_path):
    pos, neg = _books_and_web(60)
    lines = [qm.prepare(t, 200) for t in pos[:60] + neg]
    labels = [1] * 60 + [0] * len(neg)
    paths = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        params = qm.TrainParams(bucket=1024, epochs=1, seed=seed)
        m = qm.train(lines, labels, params)
        qm.write_fasttext(tmp_path / name, m.vocab, m.input_matrix, m.output_matrix, params)
        paths.append((tmp_path / name).read_bytes())
    assert paths[0] == paths[1]
    assert paths[0] != paths[2]


def test_prepare_and_tokens():
    assert qm.prepare("One  Two\nthree\u00a0Four", 3) == "one two three\u00a0four"
    assert qm.tokens("a b") == ["a", "b", "</s>"]


def test_roc_auc_counts_ties_half():
    assert qm.roc_auc(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    assert qm.roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert qm.roc_auc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0


def test_train_from_files_separates_books_from_crawl(tmp_path):
    out = tmp_path / "model"
    books = [str(shared("text/pg84_frankenstein.txt")), str(shared("text/pg1342_pride_and_prejudice.txt"))]
    web = [str(shared("web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"))]
    meta = qm.train_from_files(books, web, out, qm.TrainParams(bucket=8192, epochs=3, holdout=0.2))
    assert (out / "model.bin").is_file() and (out / "report.md").read_text().startswith("# Quality classifier")
    saved = json.loads((out / "metadata.json").read_text())
    assert saved["holdout"] == meta["holdout"]
    ho = meta["holdout"]
    assert ho["documents"] == meta["counts"]["holdout"] > 50
    assert ho["auc"] > 0.9 and ho["precision"] > 0.8 and ho["recall"] > 0.8
    assert {i["label"] for i in meta["inputs"]} == {"hq", "cc"}
    # the model scores held-out style text through fastText too
    ft = fasttext.load_model(str(out / "model.bin"))
    labels, _ = ft.predict(qm.prepare("It was on a dreary night of November that I beheld the accomplishment "
                                      "of my toils. With an anxiety that almost amounted to agony", 300))
    assert labels[0] == "__label__hq"


@pytest.mark.parametrize("case, message", [
    ("empty", "positive inputs hold no text"),
    ("one_class", "negative inputs hold no text"),
    ("tiny", "too few positive documents for a held-out split"),
    ("missing", "no file matches"),
    ("holdout", "holdout must be between 0 and 1"),
])
def test_unusable_training_data_is_refused_with_the_reason(tmp_path, case, message):
    web = str(shared("web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "a single good document"}) + "\n")
    pos, neg, params = [str(empty)], [web], qm.TrainParams()
    if case == "one_class":
        pos, neg = [web], [str(empty)]
    elif case == "tiny":
        pos = [str(one)]
    elif case == "missing":
        pos = [str(tmp_path / "nothing-*.jsonl")]
    elif case == "holdout":
        params = qm.TrainParams(holdout=1.5)
    with pytest.raises(qm.QualityModelError, match=message):
        qm.train_from_files(pos, neg, tmp_path / "out", params)
    assert not (tmp_path / "out" / "model.bin").exists()


@pytest.mark.slow  # two command-line runs
def test_cli_trains_and_refuses_a_directory_it_does_not_own(tmp_path):
    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "gristmill", "quality", "train", "--positive",
           str(shared("text/pg84_frankenstein.txt")), "--negative",
           str(shared("web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz")),
           "--output", str(out), "--epochs", "1", "--bucket", "1024", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ROC AUC" in r.stdout and (out / "model.bin").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's file")
    r = subprocess.run(cmd[:-6] + [str(mine), "--epochs", "1", "--quiet"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "not empty and was not written by gristmill" in r.stderr
    assert (mine / "notes.txt").read_text() == "the user's file" and not (mine / "model.bin").exists()


def test_corpus_shards_arrow_and_parquet_are_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [t for t in qm.read_documents(str(shared("web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz")))
             if t.strip()][:50]
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    with pa.OSFile(str(tmp_path / "part-00000.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    pq.write_table(table, tmp_path / "part-00000.parquet")
    assert list(qm.read_documents(str(tmp_path / "part-00000.arrow"))) == texts
    assert list(qm.read_documents(str(tmp_path / "part-00000.parquet"))) == texts
