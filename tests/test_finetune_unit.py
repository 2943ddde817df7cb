"""Fast tests of fine-tuning data, generation and multiple-choice scoring (real SFT files, a small real tokenizer)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import sentencepiece as spm
import torch

from gristmill.trainer.evaluate import _shots, choice_logprobs, read_mc
from gristmill.trainer.finetune_data import (
    IGNORE,
    FinetuneDataError,
    build_sft,
    encode_chat,
    is_val,
    macro_f1,
    read_conversations,
    to_messages,
)
from gristmill.trainer.generate import SamplingConfig, _filter, generate_ids
from gristmill.trainer.model import GPT, ModelArgs

from .conftest import REPO, shared

SFT_FILES = ("oasst_en_100_rank0_conversations.jsonl", "oasst_en_100_tree.jsonl", "gsm8k_train.jsonl",
             "self_instruct_seed_tasks.jsonl", "self_instruct_user_oriented_instructions.jsonl",
             "gpteacher_codegen_instruct.json", "gpteacher_roleplay_instruct.json")


@pytest.fixture(scope="module")
def sp():
    """A real SentencePiece model with the ChatML pieces, trained in a second on real SFT text."""
    conversations = read_conversations([REPO / "sample/sft/oasst_en_100_rank0_conversations.jsonl"])
    text = "\n".join(m["content"] for _, msgs in conversations for m in msgs)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=600,
                                   model_type="bpe", user_defined_symbols=["<|im_start|>", "<|im_end|>"], pad_id=3,
                                   add_dummy_prefix=False, byte_fallback=True, minloglevel=2,
                                   # as tokenizer/train.py trains
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


@pytest.mark.parametrize("name", SFT_FILES)
def test_every_shared_sft_file_reads_as_conversations(name):
    convs = read_conversations([shared(f"sft/{name}")], max_per_file=50)
    assert len(convs) >= 40
    for _, msgs in convs:
        assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"]
        assert {m["role"] for m in msgs} <= {"user", "assistant", "system"}


def test_oasst_tree_follows_the_best_ranked_reply():
    tree = {"prompt": {"role": "prompter", "text": "Q", "replies": [
        {"role": "assistant", "text": "second", "rank": 1, "replies": []},
        {"role": "assistant", "text": "best", "rank": 0,
         "replies": [{"role": "prompter", "text": "more?", "replies": []}]}]}}
    assert to_messages(tree) == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "best"}]
    with pytest.raises(FinetuneDataError, match="unknown record format"):
        to_messages({"foo": 1})


def test_labels_cover_exactly_the_assistant_tokens_of_a_real_conversation(sp):
    _, msgs = read_conversations([REPO / "sample/sft/oasst_en_100_rank0_conversations.jsonl"])[0]
    msgs = [{"role": "system", "content": "Be brief."}, *msgs]
    ids, labels = encode_chat(sp, msgs)
    assert len(ids) == len(labels)
    learned = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))
    expected = "".join(m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant")
    assert sp.decode(learned) == expected
    # everything else (system, user turns, role headers, newlines) is masked, and the text is the ChatML rendering
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    assert sp.decode(ids) == rendered
    user = msgs[1]["content"]
    assert user not in sp.decode(learned)


def test_packing_and_padding_keep_labels_aligned(sp):
    convs = read_conversations([REPO / "sample/sft/self_instruct_seed_tasks.jsonl"], max_per_file=30)
    encoded = [encode_chat(sp, m) for _, m in convs]
    for packing in (False, True):
        ex = build_sft(encoded, seq_len=64, pad_id=sp.pad_id(), packing=packing)
        assert ex.ids.shape[1] == ex.labels.shape[1] == 65
        mask = ex.labels != IGNORE
        assert np.array_equal(ex.labels[mask], ex.ids[mask])
        assert mask[:, 1:].any(axis=1).all()  # every row teaches something
    packed = build_sft(encoded, 64, sp.pad_id(), True)
    # packing loses no token: the rows are the whole stream cut into 65-token windows (the last one
    # padded), minus exactly the windows in which no assistant token is a target
    stream = np.concatenate([np.asarray(i) for i, _ in encoded])
    targets = np.concatenate([np.asarray(lab) for _, lab in encoded]) != IGNORE
    n = -(-len(stream) // 65)
    windows = np.concatenate([stream, np.full(n * 65 - len(stream), sp.pad_id())]).reshape(n, 65)
    teaches = np.concatenate([targets, np.zeros(n * 65 - len(stream), bool)]).reshape(n, 65)[:, 1:].any(axis=1)
    assert np.array_equal(packed.ids, windows[teaches])
    assert packed.stats["rows_without_assistant_tokens"] == int((~teaches).sum())
    assert packed.stats["rows"] + packed.stats["rows_without_assistant_tokens"] == n


def test_val_split_is_a_stable_hash():
    keys = [f"f.jsonl#{i}" for i in range(2000)]
    val = [k for k in keys if is_val(k, 0.1)]
    assert 150 < len(val) < 250 and val == [k for k in keys if is_val(k, 0.1)]


def test_macro_f1_by_hand():
    gold = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 → 0.5; class 1: tp2 fp1 fn0 → 0.8; class 2: tp0 fn1 → 0
    assert macro_f1(pred, gold, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


# --- generation -------------------------------------------------------------------------------------


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelArgs(vocab_size=300, padded_vocab_size=320, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                         ffn_hidden=192, max_seq_len=64)).eval()


def test_greedy_decoding_is_the_same_with_and_without_the_kv_cache():
    model = _model()
    prompt = list(range(5, 17))
    a = list(generate_ids(model, prompt, SamplingConfig(max_new_tokens=40, temperature=0, use_cache=True)))
    b = list(generate_ids(model, prompt, SamplingConfig(max_new_tokens=40, temperature=0, use_cache=False)))
    assert a == b and len(a) == 40
    assert all(t < 300 for t in a)  # padded vocabulary rows are never sampled


def test_sampling_is_seeded_and_stops_at_stop_ids():
    model = _model()
    cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    a = list(generate_ids(model, [1, 2, 3], cfg))
    assert a == list(generate_ids(model, [1, 2, 3], cfg))
    stop = SamplingConfig(**{**cfg.__dict__, "stop_ids": (a[3],)})
    assert list(generate_ids(model, [1, 2, 3], stop)) == a[: a.index(a[3])]


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(_filter(logits, 2, None)[0, 2:]).all() and torch.isfinite(_filter(logits, 2, None)[0, :2]).all()
    kept = torch.isfinite(_filter(logits, None, 0.75))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.75, 0.5 + 0.3 ≥ 0.75: the third is dropped
    assert torch.isfinite(_filter(logits, None, 0.1))[0].tolist() == [True, False, False, False]


# --- multiple choice ----------------------------------------------------------------------------------


def test_shipped_mc_file_is_valid_and_shots_never_include_the_item():
    items = read_mc(REPO / "sample/eval/genesis_next_sentence_mc.jsonl")
    assert len(items) == 200 and all(len(i["choices"]) == 4 for i in items)
    for i in (0, 57, 199):
        shots = _shots(items, i, 5, seed=0)
        assert shots.count("Question:") == 5 and items[i]["question"] not in shots


def test_choice_logprobs_equal_a_direct_computation():
    model = _model()
    ctx, cont = [5, 6, 7, 8], [9, 10, 11]
    got = choice_logprobs(model, ctx, [cont])[0]
    with torch.no_grad():
        logp = model(torch.tensor([ctx + cont[:-1]]))[0, :, :300].log_softmax(-1)
    manual = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
    assert got == pytest.approx(manual, abs=1e-5)


def test_mc_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "mc.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a"], "answer": 3}) + "\n")
    with pytest.raises(ValueError, match="mc.jsonl:1"):
        read_mc(bad)
