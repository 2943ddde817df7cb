"""SentencePiece training from corpus shards, tokenizer.json parity, packed token shards."""

from __future__ import annotations

import csv
import gzip
import json
import shutil

import numpy as np
import pytest

from gristmill.config import load_config
from gristmill.documents import open_corpus
from gristmill.pipelines.corpus import run_corpus
from gristmill.pipelines.tokenize import run_tokenize
from gristmill.tokenizer.tokens import open_sequences, pack
from gristmill.tokenizer.train import TokenizerError, load, train_tokenizer

from .conftest import DEMO_CONFIG, SAMPLE, run_cli, run_cli_and_kill_when, shared

DIRECT = ["--runner", "DirectRunner"]
PARQUET = [str(SAMPLE / "ccnet-cc-main-2020-16.parquet")]

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def corpus(demo_corpus):
    return demo_corpus


@pytest.fixture(scope="module")
def tok(demo_tokenizer):
    return demo_tokenizer


def test_training_is_deterministic_and_writes_every_file(corpus, tok, tmp_path):
    for name in ("tokenizer.model", "tokenizer.vocab", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer_meta.json"):
        assert (tok / name).is_file(), name
    again = tmp_path / "again"
    train_tokenizer(str(corpus), str(again), load_config(DEMO_CONFIG).tokenizer)
    assert (again / "tokenizer.model").read_bytes() == (tok / "tokenizer.model").read_bytes()
    meta = json.loads((tok / "tokenizer_meta.json").read_text())
    assert meta["vocab_size"] == 8000 and meta["documents"] > 300 and len(meta["corpus_manifest_sha256"]) == 64
    sp = load(str(tok))
    assert [sp.id_to_piece(i) for i in range(6)] == ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    # split digits, byte fallback for what the vocabulary lacks
    assert sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]
    assert all(p.startswith("<0x") for p in sp.encode("\ue000", out_type=str)) and len(sp.encode("\ue000")) == 3


def test_language_weights_sample_documents(corpus, tmp_path):
    cfg = load_config(DEMO_CONFIG, ["tokenizer.language_weights={en: 0.0}", "tokenizer.vocab_size=6000"]).tokenizer
    meta = train_tokenizer(str(corpus), str(tmp_path / "t"), cfg).meta
    assert "en" not in meta["languages"] and meta["documents_skipped_by_language_weight"] > 50


def _real_texts() -> list[str]:
    with open(shared("web/oscar2019_hf_dummy_multilingual.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    dolma = shared("web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz")
    with gzip.open(dolma, "rt", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f]
    with open(shared("lid/lingua_testdata_sentences.tsv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    texts += [r["text"] for r in rows[::150]]
    return texts


def test_tokenizer_json_encodes_identically(tok):
    from tokenizers import Tokenizer

    sp = load(str(tok))
    hf = Tokenizer.from_file(str(tok / "tokenizer.json"))
    texts = _real_texts()
    assert len(texts) > 1500 and len({t[:2] for t in texts}) > 100  # many languages and scripts
    edge_cases = ["नमस्ते १२३४ and 1234", "ျပည္ နဲ႔ ၁၂၃", "  leading spaces", "<|im_start|>user\nhi<|im_end|>",
                  "x<|im_end|>y", "tab\tand\nnewline", ""]
    for text in texts + edge_cases:
        assert hf.encode(text, add_special_tokens=False).ids == sp.encode(text), text[:80]
        assert hf.decode(sp.encode(text), skip_special_tokens=False) == sp.decode(sp.encode(text))


def test_transformers_loads_it_with_the_chat_template(tok):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok))
    sp = load(str(tok))
    messages = [{"role": "user", "content": "What grinds grain?"}, {"role": "assistant", "content": "A mill."}]
    rendered = hf.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|im_start|>user\nWhat grinds grain?<|im_end|>\n<|im_start|>assistant\nA mill.<|im_end|>\n"
    ids = hf.apply_chat_template(messages, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == sp.encode(rendered)
    assert hf.eos_token == "</s>" and hf.pad_token_id == 3


# --- token shards --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(corpus, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokens") / "k"
    cfg = load_config(DEMO_CONFIG, ["tokenize.seq_len=128", "tokenize.max_sequences_per_shard=2000"]).tokenize
    return out, run_tokenize(str(corpus), str(tok), str(out), cfg, ["--runner", "DirectRunner"]).manifest


def test_token_shards_account_for_every_token(corpus, tokens):
    out, m = tokens
    kept = json.loads((corpus / "manifest.json").read_text())["counts"]["kept"]
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == kept
    for split in ("train", "val"):
        s = m["splits"][split]
        seqs = sum(open_sequences(str(out / sh["path"])).shape[0] for sh in s["shards"])
        assert seqs == s["sequences"]
        assert s["tokens"] == s["tokens_in_sequences"] + s["tokens_dropped"]
        assert sum(s["tokens_by_lang"].values()) == s["tokens"]
    val_share = m["splits"]["val"]["documents"] / kept
    assert 0.02 < val_share < 0.09  # val_fraction 0.05 by id hash
    assert m["dtype"] == "uint16" and m["vocab_size"] == 8000 and m["buckets"] > 1


def test_token_shards_are_memory_mapped_without_copy(tokens):
    out, m = tokens
    path = str(out / m["splits"]["train"]["shards"][0]["path"])
    arr = open_sequences(path)
    assert arr.dtype == np.uint16 and arr.shape[1] == 129
    assert not arr.flags.owndata and not arr.flags.writeable  # a view of the read-only memory map


def test_sequences_are_documents_joined_by_eos_in_id_order(corpus, tok, tokens):
    out, m = tokens
    sp = load(str(tok))
    seqs = open_sequences(str(out / m["splits"]["val"]["shards"][0]["path"]))
    stream = seqs.reshape(-1).tolist()
    first_doc = stream[: stream.index(sp.eos_id())]
    texts = {r["id"]: r["text"] for r in open_corpus(str(corpus)).to_table().to_pylist()}
    assert sp.decode(first_doc) in texts.values()
    assert stream.count(sp.eos_id()) >= 2


def test_tokenize_is_deterministic(corpus, tok, tokens, tmp_path):
    """Encoded on a pool of one process per core (the default) or in one process
    (``--direct_num_workers 1``): the same shards."""
    out, m = tokens
    cfg = load_config(DEMO_CONFIG, ["tokenize.seq_len=128", "tokenize.max_sequences_per_shard=2000"]).tokenize
    again = tmp_path / "again"
    m2 = run_tokenize(str(corpus), str(tok), str(again), cfg, ["--runner", "DirectRunner", "--direct_num_workers", "1"])
    assert m2.manifest["splits"] == m["splits"]
    for split in ("train", "val"):
        for shard in m["splits"][split]["shards"]:
            assert (again / shard["path"]).read_bytes() == (out / shard["path"]).read_bytes()


def test_a_killed_tokenize_resumes_from_the_shards_it_encoded(corpus, tok, tokens, tmp_path):
    out, m = tokens
    again = tmp_path / "again"
    args = ["tokenize", "--corpus", str(corpus), "--tokenizer", str(tok), "--output", str(again), "--config",
            str(DEMO_CONFIG), "--set", "tokenize.seq_len=128", "--set", "tokenize.max_sequences_per_shard=2000"]
    run_cli_and_kill_when(args, lambda: len(list((again / "_work").glob("*.arrow"))) >= 3)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("reusing its encoding from an earlier run") >= 3 and not (again / "_work").exists()
    for split in ("train", "val"):
        assert json.loads((again / "manifest.json").read_text())["splits"][split] == m["splits"][split]
        for shard in m["splits"][split]["shards"]:
            assert (again / shard["path"]).read_bytes() == (out / shard["path"]).read_bytes()


def test_pack_cuts_and_counts():
    docs = [("b", np.arange(5, dtype=np.uint32)), ("a", np.arange(100, 107, dtype=np.uint32))]
    seqs, dropped = pack(docs, seq_len=3)
    assert seqs.tolist() == [[100, 101, 102, 103], [104, 105, 106, 0], [1, 2, 3, 4]] and dropped == 0
    seqs, dropped = pack(docs, seq_len=4)
    assert seqs.shape == (2, 5) and dropped == 2


# --- bad input -----------------------------------------------------------------------------------


def test_empty_corpus_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    run_corpus(PARQUET, str(empty), load_config(DEMO_CONFIG, ["langid.keep=[vo]"]), DIRECT, progress=False)
    with pytest.raises(TokenizerError, match="is empty"):
        train_tokenizer(str(empty), str(tmp_path / "t"), load_config(DEMO_CONFIG).tokenizer)


def test_vocab_the_data_cannot_support(corpus, tmp_path):
    with pytest.raises(TokenizerError, match=r"vocab_size=1000 is too small.*raise tokenizer.vocab_size"):
        train_tokenizer(str(corpus), str(tmp_path / "t"),
                        load_config(DEMO_CONFIG, ["tokenizer.vocab_size=1000"]).tokenizer)
    small = tmp_path / "small"
    run_corpus(PARQUET, str(small), load_config(DEMO_CONFIG), DIRECT, progress=False)
    with pytest.raises(TokenizerError, match=r"cannot support tokenizer.vocab_size=60000.*Lower tokenizer.vocab_size"):
        train_tokenizer(str(small), str(tmp_path / "t2"),
                        load_config(DEMO_CONFIG, ["tokenizer.vocab_size=60000"]).tokenizer)


def test_shard_with_unexpected_schema(corpus, tokens, tmp_path, tok):
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    m = json.loads((broken / "manifest.json").read_text())
    victim = broken / m["shards"][0]["path"]
    out, tm = tokens
    shutil.copy(out / tm["splits"]["train"]["shards"][0]["path"], victim)  # a token shard where text should be
    with pytest.raises(TokenizerError, match=r"unexpected schema: no column\(s\) \['id', 'text', 'lang'\]"):
        train_tokenizer(str(broken), str(tmp_path / "t"), load_config(DEMO_CONFIG).tokenizer)
    with pytest.raises(TokenizerError, match=str(victim.name)):
        run_tokenize(str(broken), str(tok), str(tmp_path / "k"), load_config(DEMO_CONFIG).tokenize, DIRECT)


def test_not_a_sentencepiece_model(tmp_path):
    bogus = tmp_path / "model.model"
    bogus.write_bytes(b"this is not a model")
    with pytest.raises(TokenizerError, match=r"model\.model is not a SentencePiece model"):
        load(str(bogus))
    with pytest.raises(TokenizerError, match="no SentencePiece model"):
        load(str(tmp_path))


def test_cli_encode_decode(tok):
    ids = run_cli("tokenizer", "encode", "--tokenizer", tok, "The old mill", check=True).stdout.split()
    dec = run_cli("tokenizer", "decode", "--tokenizer", tok, *ids, check=True)
    assert dec.stdout.strip() == "The old mill"
    pieces = run_cli("tokenizer", "encode", "--pieces", "--tokenizer", tok, "The old mill", check=True)
    assert "▁old" in pieces.stdout
    bad = run_cli("tokenizer", "encode", "--tokenizer", "/nonexistent", "x")
    assert bad.returncode == 2 and "tokenizer /nonexistent does not exist" in bad.stderr


# --- tokenize.select: part of a corpus as a mixture source --------------------------------------


def _corpus_rows(corpus):
    table = open_corpus(str(corpus)).to_table(columns=["id", "lang", "source"])
    return table.to_pylist()


def test_select_tokenizes_only_the_chosen_languages_and_counts_the_rest(corpus, tok, tokens, tmp_path):
    rows = _corpus_rows(corpus)
    langs = sorted({r["lang"] for r in rows}, key=lambda lg: -sum(r["lang"] == lg for r in rows))
    chosen = langs[:2]  # the two largest languages
    out = tmp_path / "sel"
    cfg = load_config(DEMO_CONFIG, ["tokenize.seq_len=128", "tokenize.max_sequences_per_shard=2000",
                                    f"tokenize.select.langs={json.dumps(chosen)}"]).tokenize
    m = run_tokenize(str(corpus), str(tok), str(out), cfg, DIRECT).manifest
    expected = sum(r["lang"] in chosen for r in rows)
    assert 0 < expected < len(rows)
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == expected
    assert m["select"]["documents_selected"] == expected
    assert m["select"]["documents_skipped"] == len(rows) - expected
    assert m["select"]["conditions"] == {"langs": chosen}
    for split in ("train", "val"):
        assert set(m["splits"][split]["tokens_by_lang"]) <= set(chosen)
        # the chosen languages' tokens are exactly what the unrestricted run gave them
        full = tokens[1]["splits"][split]["tokens_by_lang"]
        assert m["splits"][split]["tokens_by_lang"] == {lg: full[lg] for lg in chosen if lg in full}
    # by another column: one source file of the sample crawl
    source = rows[0]["source"]
    cfg = load_config(DEMO_CONFIG, ["tokenize.seq_len=128",
                                    f"tokenize.select.columns={{source: [{json.dumps(source)}]}}"]).tokenize
    m = run_tokenize(str(corpus), str(tok), str(tmp_path / "src"), cfg, DIRECT).manifest
    assert m["select"]["documents_selected"] == sum(r["source"] == source for r in rows)


@pytest.mark.parametrize("setting, message", [
    ("tokenize.select.min_quality_score=0.5", "a quality bucket needs quality scores"),
    ("tokenize.select.columns={no_such_column: [1]}", "no column 'no_such_column'"),
    ("tokenize.select.langs=[xx-not-a-language]", "keeps none of the"),
])
def test_select_that_cannot_work_is_refused_before_the_job(corpus, tok, tmp_path, setting, message):
    cfg = load_config(DEMO_CONFIG, [setting]).tokenize
    with pytest.raises(TokenizerError, match=message):
        run_tokenize(str(corpus), str(tok), str(tmp_path / "k"), cfg, DIRECT)
    assert not (tmp_path / "k").exists()


def test_rehydration_steps():
    from gristmill.pipelines.tokenize import copies_for

    steps = ((2, 2), (5, 3), (100, 1))
    assert [copies_for(n, steps) for n in (None, 1, 2, 4, 5, 99, 100, 5000)] == [1, 1, 2, 2, 3, 3, 1, 1]
    assert copies_for(7, ()) == 1
    for bad in ("[[2, 2], [2, 3]]", "[[0, 2]]", "[[3, 0]]", "[[5, 2], [2, 3]]"):
        with pytest.raises(Exception, match="rehydrate"):
            load_config(None, [f"tokenize.rehydrate={bad}"])


def test_rehydration_repeats_train_documents_by_cluster_size(corpus, tok, tokens, tmp_path):
    """Documents of near-duplicate clusters are repeated in the train split; val is untouched, and documents
    are still counted once."""
    from gristmill.pipelines.tokenize import _unit

    cfg = load_config(DEMO_CONFIG, ["tokenize.seq_len=128", "tokenize.max_sequences_per_shard=2000",
                                    "tokenize.rehydrate=[[2, 3]]"]).tokenize
    sp = load(str(tok))
    rows = open_corpus(str(corpus)).to_table(columns=["id", "text", "cluster_size"]).to_pylist()
    train_clustered = [r for r in rows
                       if (r["cluster_size"] or 1) >= 2 and _unit(r["id"], cfg.seed) >= cfg.val_fraction]
    assert train_clustered  # the sample crawl has near-duplicates
    m = run_tokenize(str(corpus), str(tok), str(tmp_path / "rehydrated"), cfg, DIRECT).manifest
    plain = tokens[1]
    for split in ("train", "val"):
        assert m["splits"][split]["documents"] == plain["splits"][split]["documents"]
    assert m["splits"]["val"]["tokens"] == plain["splits"]["val"]["tokens"] and m["splits"]["val"]["copies"] == 0
    # two extra copies of each clustered train document: its tokens (and eos) twice more
    assert m["splits"]["train"]["copies"] == 2 * len(train_clustered)
    extra_tokens = 2 * sum(len(sp.encode(r["text"])) + 1 for r in train_clustered)
    assert m["splits"]["train"]["tokens"] == plain["splits"]["train"]["tokens"] + extra_tokens
    assert m["rehydrate"] == {"steps": [[2, 3]], "copies_added": 2 * len(train_clustered)}


def test_an_equal_mix_of_corpora_takes_as_many_documents_from_each(corpus, tmp_path):
    small = tmp_path / "small"
    run_corpus(PARQUET, str(small), load_config(DEMO_CONFIG), DIRECT, progress=False)
    small_kept = json.loads((small / "manifest.json").read_text())["counts"]["kept"]
    big_kept = json.loads((corpus / "manifest.json").read_text())["counts"]["kept"]
    assert big_kept > 2 * small_kept
    meta = train_tokenizer([str(corpus), str(small)], str(tmp_path / "mix"),
                           load_config(DEMO_CONFIG, ["tokenizer.vocab_size=2000"]).tokenizer).meta
    assert meta["corpus"] == [str(corpus), str(small)]
    assert meta["mix_shares"][str(small)] == 1.0
    assert meta["mix_shares"][str(corpus)] == pytest.approx(small_kept / big_kept)
    # about small_kept documents from each (the big one's share is chosen by a hash of the id)
    assert 1.5 * small_kept < meta["documents"] < 2.6 * small_kept
