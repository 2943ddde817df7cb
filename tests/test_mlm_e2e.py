"""End to end, masked language modelling: `gristmill pretrain` with model.objective: mlm on real token shards
(a Ray Train worker), exact resume, `gristmill eval` (masked perplexity), `gristmill finetune-cls` from the encoder
on real language-labelled sentences, `gristmill export-hf` (fill-mask, sequence classification), and the errors
of causal-only commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gristmill import api

from . import training
from .conftest import run_cli, shared

pytestmark = pytest.mark.slow


def _yaml(path: Path, tree: dict) -> str:
    return str(training.write_config(path, tree))


def _loop(storage: Path, name: str, **kw) -> dict:
    return {"storage_path": str(storage), "name": name, "num_workers": 0, "batch_size": 16, "micro_batch_size": 8,
            "log_every": 1, "tensorboard": False, **kw}


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def encoder(demo_tokens64, tmp_path_factory) -> Path:
    """An MLM encoder pretrained for 40 steps on the command line (Ray Train's local mode; on Ray Train
    workers: test_mlm_under_ddp_and_fsdp_on_two_workers_alike)."""
    root = tmp_path_factory.mktemp("mlm")
    cfg = _yaml(root / "mlm.yaml", {"model": {"preset": "tiny", "objective": "mlm"}, "pretrain": {
        "data": str(demo_tokens64), **_loop(root / "runs", "mlm", max_steps=40, warmup_steps=5, eval_every=20,
                                          eval_batches=4, checkpoint_every=20)}})
    r = run_cli("pretrain", "--config", cfg, check=True, timeout=600)
    assert "val_accuracy" in r.stdout
    run = root / "runs" / "mlm"
    records = _records(run)
    losses = [m["loss"] for m in records if "loss" in m]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # it learns
    val = [m for m in records if "val_accuracy" in m]
    # held out, it learns too: the loss falls (accuracy may still sit on the most-frequent-token plateau
    # after 40 steps, as it does on the demo corpus)
    assert len(val) == 2 and val[-1]["val_loss"] < val[0]["val_loss"] and val[-1]["val_accuracy"] > 0
    ckpt = run / "checkpoint_00000040"
    args = json.loads((ckpt / "model_config.json").read_text())
    assert args["objective"] == "mlm" and args["mask_id"] > 3
    return ckpt


def test_a_resubmitted_mlm_run_resumes_exactly(demo_tokens64, tmp_path):
    """A run that lost everything after its step-4 checkpoint is submitted again: it resumes there and ends
    with the uninterrupted run's weights (the masks are part of the data position)."""
    from safetensors.torch import load_file

    tree = {"model": {"preset": "tiny", "objective": "mlm"}, "pretrain": {
        "data": str(demo_tokens64), **_loop(tmp_path / "runs", "again", num_workers=0, max_steps=8, warmup_steps=2,
                                          eval_every=100, checkpoint_every=4)}}
    cfg = training.load(_yaml(tmp_path / "a.yaml", tree))
    api.pretrain(cfg)  # in this process
    run = tmp_path / "runs" / "again"
    whole = load_file(str(run / "checkpoint_00000008" / "model.safetensors"))
    shutil.rmtree(run / "checkpoint_00000008")
    api.pretrain(cfg)
    resumed = [r for r in _records(run) if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["checkpoint"].endswith("checkpoint_00000004")
    again = load_file(str(run / "checkpoint_00000008" / "model.safetensors"))
    assert again.keys() == whole.keys()
    for k in again:
        assert torch.equal(again[k], whole[k]), k


def test_eval_reports_masked_perplexity(encoder, demo_tokens64, tmp_path):
    r = run_cli("eval", "--checkpoint", encoder, "--data", demo_tokens64, "--output", tmp_path / "e.json",
                check=True)
    assert "masked-token perplexity" in r.stdout
    report = json.loads((tmp_path / "e.json").read_text())["perplexity"]
    assert report["objective"] == "mlm" and report["masked_tokens"] > 0
    assert 1 < report["perplexity"] < 8000 and 0 < report["accuracy"] < 1


def test_export_gives_a_fill_mask_model_with_the_native_logits(encoder, tmp_path):
    import sentencepiece as spm
    import transformers

    from gristmill.trainer.checkpoint import load_model

    out = tmp_path / "hf"
    run_cli("export-hf", "--checkpoint", encoder, "--output", out, check=True)
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out, dtype=torch.float32).eval()
    native = load_model(encoder)
    sp = spm.SentencePieceProcessor(model_file=str(encoder / "tokenizer.model"))
    lines = open(shared("web/oscar2019_hf_dummy_multilingual.jsonl")).readlines()[:20]
    for line in lines:
        ids = sp.encode(json.loads(line)["text"][:300])[:64]
        ids[len(ids) // 3] = native.args.mask_id
        x = torch.tensor([ids])
        with torch.no_grad():
            diff = (native(x) - hf(x).logits).abs().max().item()
        assert diff <= 1e-4, diff
    preds = transformers.pipeline("fill-mask", model=str(out))("The mill grinds the <mask>.")
    assert len(preds) == 5 and all(0 < p["score"] <= 1 for p in preds)


def test_classification_from_the_encoder_learns_and_exports(encoder, tmp_path):
    import transformers

    from gristmill.trainer.checkpoint import load_model

    cfg = _yaml(tmp_path / "cls.yaml", {"finetune_cls": {
        "init_checkpoint": str(encoder), "files": [str(shared("lid/lingua_testdata_sentences.tsv"))],
        "text_field": "text", "label_field": "lang", "labels": ["de", "en", "fr", "sv"], "max_examples_per_label": 200,
        "val_fraction": 0.25, "seq_len": 48,
        **_loop(tmp_path / "runs", "cls", num_workers=0, max_steps=80, warmup_steps=5, lr=2e-3, eval_every=80,
                checkpoint_every=80, micro_batch_size=16)}})
    r = run_cli("finetune-cls", "--config", cfg, check=True)
    assert "val_accuracy" in r.stdout
    final = [m for m in _records(tmp_path / "runs" / "cls") if "val_accuracy" in m][-1]
    # an encoder this briefly pretrained (40 steps: ~6k masked targets) is a weak start; chance is 0.25
    assert final["val_examples"] > 150 and final["val_accuracy"] > 0.45 and final["val_macro_f1"] > 0.35
    ckpt = tmp_path / "runs" / "cls" / "checkpoint_00000080"
    assert json.loads((ckpt / "model_config.json").read_text())["pooling"] == "mean"
    out = tmp_path / "hf"
    run_cli("export-hf", "--checkpoint", ckpt, "--output", out, check=True)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    native = load_model(ckpt, with_classifier=True)
    texts = ["Der Hund schläft im Garten.", "The dog sleeps in the garden.", "Le chien dort.", "Hunden sover."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        mine = native(enc["input_ids"], enc["attention_mask"].sum(1) - 1)
        theirs = hf(**enc).logits
    assert (mine - theirs).abs().max().item() <= 1e-4
    clf = transformers.pipeline("text-classification", model=str(out))
    assert clf(texts[0])[0]["label"] in ("de", "en", "fr", "sv")


def test_causal_only_commands_refuse_the_encoder(encoder, tmp_path):
    r = run_cli("generate", "--checkpoint", encoder, "The mill")
    assert r.returncode != 0 and "masked-language-model encoder" in r.stderr and "clm" in r.stderr
    assert "Traceback" not in r.stderr
    files = [str(Path(__file__).parent.parent / "sample/sft/self_instruct_seed_tasks.jsonl")]
    cfg = _yaml(tmp_path / "sft.yaml", {"sft": {"init_checkpoint": str(encoder), "files": files,
                                                **_loop(tmp_path / "runs", "sft", num_workers=0)}})
    r = run_cli("sft", "--config", cfg)
    assert r.returncode != 0 and "finetune-cls" in r.stderr and "Traceback" not in r.stderr


def test_mlm_under_ddp_and_fsdp_on_two_workers_alike(demo_tokens64, tmp_path):
    """Two ranks (torchrun; Ray Train's local mode): each masks its own micro-batches (by data position), DDP
    averages the gradients, FSDP2 shards them; the two follow each other (reductions in another order: not bit
    for bit) and the checkpoint holds the full encoder."""
    from safetensors.torch import load_file

    runs = {}
    for parallel in ("ddp", "fsdp"):
        cfg = _yaml(tmp_path / f"{parallel}.yaml", {"model": {"preset": "tiny", "objective": "mlm"}, "pretrain": {
            "data": str(demo_tokens64), **_loop(tmp_path / "runs", parallel, num_workers=0, parallel=parallel,
                                              max_steps=6, warmup_steps=2, eval_every=6, eval_batches=2,
                                              checkpoint_every=6)}})
        r = training.torchrun("pretrain", Path(cfg))
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        runs[parallel] = tmp_path / "runs" / parallel
        assert len(list((runs[parallel] / "workers").glob("rank*.json"))) == 2
    losses = {k: [m["loss"] for m in _records(v) if "loss" in m] for k, v in runs.items()}
    assert len(losses["ddp"]) == len(losses["fsdp"]) == 6
    assert max(abs(a - b) for a, b in zip(losses["ddp"], losses["fsdp"])) < 2e-3
    ddp, fsdp = (load_file(str(runs[k] / "checkpoint_00000006" / "model.safetensors")) for k in ("ddp", "fsdp"))
    assert ddp.keys() == fsdp.keys() and max(float((ddp[k] - fsdp[k]).abs().max()) for k in ddp) < 1e-3
    assert any("val_accuracy" in m for m in _records(runs["fsdp"]))
