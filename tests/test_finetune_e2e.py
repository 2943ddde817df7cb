"""End to end: a pretraining checkpoint on real token shards (the session's, tests/conftest.py) → SFT on real
chat data → generate, eval, export to transformers; classification fine-tuning on real language-labelled
sentences."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from gristmill import api

from . import training
from .conftest import GRISTMILL, REPO, run_cli, shared

pytestmark = pytest.mark.slow

def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=timeout, check=True)


def _yaml(path: Path, tree: dict) -> str:
    return str(training.write_config(path, tree))


def _loop(storage: Path, name: str, **kw) -> dict:
    return {"storage_path": str(storage), "name": name, "num_workers": 0, "batch_size": 8, "micro_batch_size": 8,
            "log_every": 1, "tensorboard": False, **kw}


@pytest.fixture(scope="module")
def sft_checkpoint(pretrained, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft")
    files = [str(REPO / "sample/sft" / name)
             for name in ("oasst_en_100_rank0_conversations.jsonl", "self_instruct_seed_tasks.jsonl")]
    cfg = _yaml(root / "sft.yaml", {"sft": {"init_checkpoint": str(pretrained), "files": files, "seq_len": 64,
                                            **_loop(root / "runs", "sft", max_steps=20, warmup_steps=2, lr=1e-3,
                                                    eval_every=10, checkpoint_every=10)}})
    r = _run("sft", "--config", cfg)
    assert "val_loss" in r.stdout
    run = root / "runs" / "sft"
    losses = [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert len(losses) == 20 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # it learns the assistant turns
    ckpt = run / "checkpoint_00000020"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["task"] == "sft" and state["init_checkpoint"] == str(pretrained)
    return ckpt


def test_sft_checkpoint_generates_a_chat_answer_the_same_with_and_without_cache(sft_checkpoint):
    args = ["generate", "--checkpoint", str(sft_checkpoint), "--chat", "What is a mill?", "--temperature", "0",
            "--max-new-tokens", "24"]
    cached = _run(*args).stdout
    uncached = _run(*args, "--no-cache").stdout
    assert cached == uncached
    # the same at the token level, through the chat template (a model this small may well answer in whitespace)
    from gristmill.trainer.checkpoint import load_model
    from gristmill.trainer.finetune_data import encode_chat
    from gristmill.trainer.generate import SamplingConfig, generate_ids, load_tokenizer

    model, sp = load_model(sft_checkpoint), load_tokenizer(sft_checkpoint)
    prompt = encode_chat(sp, [{"role": "user", "content": "Name three grains."}], add_generation_prompt=True)[0]
    runs = [list(generate_ids(model, prompt, SamplingConfig(max_new_tokens=30, temperature=0, use_cache=c)))
            for c in (True, False)]
    assert runs[0] == runs[1] and len(runs[0]) > 0
    sampled = _run("generate", "--checkpoint", sft_checkpoint, "The mill", "--max-new-tokens", "16", "--seed", "3")
    sampled = sampled.stdout
    assert sampled.startswith("The mill")


def test_export_to_transformers_gives_the_same_logits_and_ids(sft_checkpoint, tmp_path):
    import sentencepiece as spm
    import transformers

    from gristmill.trainer.checkpoint import load_model

    out = tmp_path / "hf"
    _run("export-hf", "--checkpoint", str(sft_checkpoint), "--output", str(out))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "LlamaForCausalLM"
    sp = spm.SentencePieceProcessor(model_file=str(sft_checkpoint / "tokenizer.model"))
    native = load_model(sft_checkpoint)
    lines = open(shared("web/oscar2019_hf_dummy_multilingual.jsonl")).readlines()[:40]
    texts = [json.loads(x)["text"][:300] for x in lines]
    for text in texts:
        ids = sp.encode(text)
        assert tok(text)["input_ids"] == ids
        x = torch.tensor([ids[:64]])
        with torch.no_grad():
            diff = (native(x) - hf(x).logits).abs().max().item()
        assert diff <= 1e-4, diff
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # the exported template gives the ids fine-tuning trained on (encoded there segment by segment)
    from gristmill.trainer.finetune_data import encode_chat, read_conversations

    convs = read_conversations([REPO / "sample/sft/oasst_en_100_rank0_conversations.jsonl",
                                REPO / "sample/sft/self_instruct_seed_tasks.jsonl"])
    for _, msgs in convs:
        ids = tok.apply_chat_template(msgs, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert list(ids) == encode_chat(sp, msgs)[0]


def test_export_chats_correctly_and_never_deletes_a_users_files(sft_checkpoint, tmp_path):
    import transformers
    from transformers import LogitsProcessor, LogitsProcessorList

    from gristmill.trainer.checkpoint import load_model_args
    from gristmill.trainer.finetune_data import IGNORE, encode_chat, read_conversations

    # a directory of the user's: refused; with --overwrite the export goes next to the user's file
    out = tmp_path / "hf"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    r = run_cli("export-hf", "--checkpoint", sft_checkpoint, "--output", out)
    assert r.returncode == 2 and "holds files export-hf did not write (notes.txt, sub)" in r.stderr
    assert not (out / "config.json").exists()
    _run("export-hf", "--checkpoint", str(sft_checkpoint), "--output", str(out), "--overwrite")
    _run("export-hf", "--checkpoint", str(sft_checkpoint), "--output", str(out), "--overwrite")
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir()
    again = tmp_path / "again"  # a directory holding only an earlier export is simply replaced
    _run("export-hf", "--checkpoint", str(sft_checkpoint), "--output", str(again))
    _run("export-hf", "--checkpoint", str(sft_checkpoint), "--output", str(again))
    for f in out.iterdir():
        if f.is_file() and f.name != "notes.txt":
            assert f.stat().st_mode & 0o777 == 0o644, f
    card = (out / "README.md").read_text()
    assert "sft" in card and "steps" in card and "apply_chat_template" in card
    assert str(REPO) not in card and str(tmp_path) not in card and "/tmp/" not in card  # the card travels
    # its snippet runs as written with the pinned transformers (PATH: where the model was saved)
    assert training.run_card_snippet(out).endswith("\n")

    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.padding_side == "left" and tok.model_max_length == load_model_args(sft_checkpoint).max_seq_len
    assert model.generation_config.eos_token_id == [tok.eos_token_id, im_end]
    # the assistant mask TRL's assistant-only loss uses marks exactly the tokens SFT trained on
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sft_checkpoint / "tokenizer.model"))
    convs = read_conversations([REPO / "sample/sft/oasst_en_100_rank0_conversations.jsonl",
                                REPO / "sample/sft/self_instruct_seed_tasks.jsonl"])
    for _, msgs in convs:
        r = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, labels = encode_chat(sp, msgs)
        assert list(r["input_ids"]) == ids
        assert list(r["assistant_masks"]) == [int(x != IGNORE) for x in labels]

    class ImEndAtStep3(LogitsProcessor):  # the model says <|im_end|> as its third token, nothing stops it before
        def __call__(self, input_ids, scores):
            scores[:, [tok.eos_token_id, im_end]] = -1e9
            if input_ids.shape[1] == start + 2:
                scores[:, im_end] = 1e9
            return scores

    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a grain."}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    start = prompt["input_ids"].shape[1]
    out_ids = model.generate(**prompt, max_new_tokens=30, do_sample=False,
                             logits_processor=LogitsProcessorList([ImEndAtStep3()]))
    assert out_ids.shape[1] == start + 3 and int(out_ids[0, -1]) == im_end  # generation stopped there

    # a native checkpoint is not mistaken for a transformers directory
    with pytest.raises(ValueError, match=r"gristmill-native-checkpoint \(not a transformers model: run `gristmill "
                                         r"export-hf --checkpoint THIS_DIR --output HF_DIR`"):
        transformers.AutoModelForCausalLM.from_pretrained(sft_checkpoint)


def test_eval_reports_perplexity_and_multiple_choice(pretrained, demo_tokens64, tmp_path):
    report = tmp_path / "eval.json"
    mc = REPO / "sample/eval/genesis_next_sentence_mc.jsonl"
    # the loop validated on its first eval_batches (4) micro-batches of 8 rows: the same rows here
    _run("eval", "--checkpoint", pretrained, "--data", demo_tokens64, "--mc", mc, "--shots", "2", "--limit", "20",
         "--max-batches", "4", "--output", report)
    r = json.loads(report.read_text())
    # the same number the training loop logged for the whole val split at its last step
    in_loop = json.loads((pretrained / "trainer_state.json").read_text())["metrics"]["val_loss"]
    assert r["perplexity"]["loss"] == pytest.approx(in_loop, abs=1e-4) and r["perplexity"]["sequences"] == 32
    mc = r["multiple_choice"]["genesis_next_sentence_mc.jsonl"]
    assert mc["items"] == 20 and mc["shots"] == 2 and 0 <= mc["accuracy"] <= 1 and mc["chance"] == 0.25


def test_classification_fine_tuning_learns_languages(pretrained, tmp_path):
    cfg = _yaml(tmp_path / "cls.yaml", {"finetune_cls": {
        "init_checkpoint": str(pretrained), "files": [str(shared("lid/lingua_testdata_sentences.tsv"))],
        "text_field": "text", "label_field": "lang", "labels": ["de", "en", "fr", "sv"], "max_examples_per_label": 200,
        "val_fraction": 0.25, "seq_len": 48,
        **_loop(tmp_path / "runs", "cls", max_steps=60, warmup_steps=5, lr=2e-3, eval_every=60, checkpoint_every=60,
                batch_size=16, micro_batch_size=16)}})
    r = _run("finetune-cls", "--config", cfg)
    assert "val_accuracy" in r.stdout
    metrics = [json.loads(x) for x in (tmp_path / "runs" / "cls" / "metrics.jsonl").read_text().splitlines()]
    final = [m for m in metrics if "val_accuracy" in m][-1]
    assert final["val_examples"] > 150
    assert final["val_accuracy"] > 0.5 and final["val_macro_f1"] > 0.45  # chance is 0.25
    state = json.loads((tmp_path / "runs" / "cls" / "checkpoint_00000060" / "trainer_state.json").read_text())
    assert state["classes"] == ["de", "en", "fr", "sv"]


def test_a_resubmitted_sft_run_resumes_from_its_own_checkpoint(pretrained, tmp_path):
    files = [str(REPO / "sample/sft/self_instruct_seed_tasks.jsonl")]
    loop = _loop(tmp_path / "runs", "again", max_steps=6, warmup_steps=2, eval_every=100, checkpoint_every=3)
    tree = {"sft": {"init_checkpoint": str(pretrained), "files": files, "seq_len": 64, **loop}}
    api.sft(training.load(_yaml(tmp_path / "a.yaml", tree)))  # in this process (the CLI: sft_checkpoint)
    tree["sft"]["max_steps"] = 9
    api.sft(training.load(_yaml(tmp_path / "b.yaml", tree)))
    run = tmp_path / "runs" / "again"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in records if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["checkpoint"].endswith("checkpoint_00000006")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 10))
    state = json.loads((run / "checkpoint_00000009" / "trainer_state.json").read_text())
    assert state["task"] == "sft" and state["samples"] == 9 * 8


def test_a_resubmitted_classification_run_resumes_exactly(pretrained, tmp_path):
    """A run that lost everything after its step-6 checkpoint (as a crash would) is submitted again: it
    resumes from step 6 and ends with the weights of the uninterrupted run (classifier head included)."""
    import shutil

    from safetensors.torch import load_file

    tree = {"finetune_cls": {
        "init_checkpoint": str(pretrained), "files": [str(shared("lid/lingua_testdata_sentences.tsv"))],
        "text_field": "text", "label_field": "lang", "labels": ["de", "en", "fr", "sv"], "max_examples_per_label": 40,
        "val_fraction": 0.25, "seq_len": 32, **_loop(tmp_path / "runs", "cls", max_steps=9, warmup_steps=2,
                                                     eval_every=100, checkpoint_every=3)}}
    cfg = training.load(_yaml(tmp_path / "cls.yaml", tree))
    api.finetune_cls(cfg)  # in this process (the CLI: test_classification_fine_tuning_learns_languages)
    run = tmp_path / "runs" / "cls"
    whole = load_file(str(run / "checkpoint_00000009" / "model.safetensors"))
    shutil.rmtree(run / "checkpoint_00000009")
    api.finetune_cls(cfg)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in records if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["checkpoint"].endswith("checkpoint_00000006")
    state = json.loads((run / "checkpoint_00000009" / "trainer_state.json").read_text())
    assert state["classes"] == ["de", "en", "fr", "sv"] and state["samples"] == 9 * 8
    again = load_file(str(run / "checkpoint_00000009" / "model.safetensors"))
    assert any(k.startswith("cls_head") for k in again) and again.keys() == whole.keys()
    for k in again:
        assert torch.equal(again[k], whole[k]), k


def test_fine_tuning_errors_say_what_to_fix(tmp_path):
    cfg = _yaml(tmp_path / "bad.yaml", {"sft": {"init_checkpoint": str(tmp_path / "nope"), "files": ["x.jsonl"]}})
    env = dict(os.environ)
    r = subprocess.run([GRISTMILL, "sft", "--config", cfg], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and f"sft.init_checkpoint: checkpoint {tmp_path / 'nope'} does not exist" in r.stderr
