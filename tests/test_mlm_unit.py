"""Masked language modelling (model.objective: mlm): the tokenizer's <mask>, BERT's masking, the encoder, its
loss, exact resume, the errors of causal-only commands, masked perplexity, and export to transformers (no Ray)."""

from __future__ import annotations

import contextlib
import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch

from gristmill.config import ClsConfig, GristmillConfig, TokenizerConfig
from gristmill.tokenizer.tokens import TokenSplit, pack, shard_bytes, token_dtype
from gristmill.trainer import checkpoint as ckpt
from gristmill.trainer.data import BatchPlan, DataError, SampleStream, micro_batch_start, mlm_mask
from gristmill.trainer.model import GPT, ModelArgs, build_model, document_mask
from gristmill.trainer.tasks import MLMTask

from . import training
from .conftest import REPO

VOCAB = 400


def _train_tokenizer(out: Path, reserve_mask: bool = True) -> Path:
    """A small tokenizer trained on the docs, written as `gristmill tokenizer train` writes one."""
    import sentencepiece as spm

    from gristmill.tokenizer.hf import export_hf
    from gristmill.tokenizer.train import SPECIAL, SPECIAL_IDS, trainer_options

    opts = trainer_options(TokenizerConfig(vocab_size=VOCAB, num_threads=1))
    if not reserve_mask:  # a tokenizer from before <mask> was reserved
        opts["user_defined_symbols"] = [s for s in opts["user_defined_symbols"] if s != "<mask>"]
    buf = BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_doc_lines()), model_writer=buf, **opts)
    out.mkdir(parents=True)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    meta = {"trainer_options": opts,
            "special_tokens": {k: {"piece": SPECIAL[k], "id": SPECIAL_IDS[k]} for k in SPECIAL},
            "user_defined_symbols": {s: sp.piece_to_id(s) for s in opts["user_defined_symbols"]}}
    export_hf(buf.getvalue(), str(out), meta)
    (out / "tokenizer_meta.json").write_text(json.dumps(meta))
    return out


def _doc_lines() -> list[str]:
    return [x for f in sorted((REPO / "docs").glob("*.md")) for x in f.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return _train_tokenizer(tmp_path_factory.mktemp("tok") / "t")


@pytest.fixture(scope="module")
def sp(tok):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model"))


@pytest.fixture(scope="module")
def tokens(tok, sp, tmp_path_factory) -> Path:
    """The docs' paragraphs as documents joined by eos, packed into rows of 32 + 1 tokens (as `gristmill tokenize`)."""
    out = tmp_path_factory.mktemp("tokens")
    docs = [(f"{i:05d}", np.asarray(sp.encode(line) + [sp.eos_id()], dtype=np.uint32))
            for i, line in enumerate(_doc_lines())]
    splits = {}
    for split, part in (("train", docs[: len(docs) * 9 // 10]), ("val", docs[len(docs) * 9 // 10:])):
        seqs, _ = pack(part, 32)
        (out / split).mkdir()
        (out / split / "part-00000.arrow").write_bytes(shard_bytes(seqs, token_dtype(VOCAB)))
        splits[split] = {"sequences": len(seqs), "shards": [{"path": f"{split}/part-00000.arrow",
                                                             "sequences": len(seqs)}]}
    (out / "manifest.json").write_text(json.dumps({"kind": "tokens", "seq_len": 32, "vocab_size": VOCAB,
                                                   "tokenizer": str(tok), "splits": splits}))
    return out


def _args(sp=None, **kw) -> ModelArgs:
    base = dict(vocab_size=VOCAB, padded_vocab_size=448, n_layer=2, n_head=4, n_kv_head=2, d_model=64, ffn_hidden=192,
                max_seq_len=64, objective="mlm", mask_id=sp.piece_to_id("<mask>") if sp else 6)
    return ModelArgs(**{**base, **kw})


def _task(tokens, sp, args, seed=0) -> MLMTask:
    train, val = TokenSplit(tokens, "train"), TokenSplit(tokens, "val")
    return MLMTask(train, val, train.seq_len, args, (sp.bos_id(), sp.eos_id(), sp.pad_id()), sp.eos_id(), seed)


def _save(path: Path, model: GPT, tok: Path, **state) -> Path:
    state = {"step": 1, "samples": 0, "tokens_seen": 0, "batch_size": 1, "task": "pretrain", **state}
    return ckpt.save_checkpoint(path, model.state_dict(), None, ckpt.gather_rng(), state, model.args, {}, str(tok))


# --- the tokenizer ------------------------------------------------------------------------------------------------


def test_the_tokenizer_reserves_a_mask_token_that_tokenizer_json_encodes_alike(tok, sp):
    import transformers

    mask = sp.piece_to_id("<mask>")
    assert mask != sp.unk_id() and mask == 6  # after unk, bos, eos, pad and the two chat markers
    hf = transformers.AutoTokenizer.from_pretrained(tok)
    assert hf.mask_token == "<mask>" and hf.mask_token_id == mask
    for text in ["The corpus <mask> shards.", "<mask><mask> x", "tokenize<mask>", "no mask here"]:
        assert hf(text)["input_ids"] == sp.encode(text), text
    assert sp.encode("a <mask> b").count(mask) == 1


def test_objective_mlm_with_a_tokenizer_without_mask_says_what_to_do(tmp_path):
    from gristmill.trainer.launch import mask_token_id

    old = _train_tokenizer(tmp_path / "old", reserve_mask=False)
    with pytest.raises(DataError, match=r"<mask> token.*has none.*tokenizer train.*objective: clm"):
        mask_token_id(str(old))


# --- masking --------------------------------------------------------------------------------------------------------


def test_masking_follows_berts_proportions_and_never_masks_special_tokens():
    rng = np.random.default_rng(0)
    tokens = rng.integers(10, VOCAB, size=(2000, 64))
    tokens[:, ::16] = 2  # eos: never chosen
    inputs, labels = mlm_mask(tokens, np.arange(2000), seed=0, split="train", mask_id=6, vocab_size=VOCAB,
                              special_ids=(1, 2, 3))
    chosen = labels != -100
    normal = tokens != 2
    assert not chosen[~normal].any()
    assert chosen[normal].mean() == pytest.approx(0.15, abs=0.003)  # 120,000 candidates: σ ≈ 0.001
    assert np.array_equal(labels[chosen], tokens[chosen])  # the originals are the targets
    assert np.array_equal(inputs[~chosen], tokens[~chosen])  # nothing else changes
    n = chosen.sum()
    masked = (inputs == 6) & chosen
    kept = (inputs == tokens) & chosen
    random = chosen & ~masked & ~kept
    assert masked.sum() / n == pytest.approx(0.8, abs=0.01)
    assert kept.sum() / n == pytest.approx(0.1 + 0.1 / VOCAB, abs=0.006)  # a random id may be the original
    assert random.sum() / n == pytest.approx(0.1, abs=0.006)
    assert inputs[random].min() >= 0 and inputs[random].max() < VOCAB
    # the random replacements are spread over the vocabulary, not one id
    assert len(np.unique(inputs[random])) > VOCAB // 2


def test_a_rows_mask_depends_only_on_seed_split_and_data_position():
    rng = np.random.default_rng(1)
    tokens = rng.integers(10, VOCAB, size=(8, 64))
    args = dict(mask_id=6, vocab_size=VOCAB, special_ids=(1, 2, 3))
    a = mlm_mask(tokens, np.arange(100, 108), 0, "train", **args)
    b = mlm_mask(tokens, np.arange(100, 108), 0, "train", **args)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # the same rows read in another order (another worker split) keep their masks
    order = np.array([5, 2, 7, 0, 1, 6, 3, 4])
    c = mlm_mask(tokens[order], np.arange(100, 108)[order], 0, "train", **args)
    assert np.array_equal(c[1], a[1][order]) and np.array_equal(c[0], a[0][order])
    # another position (the same sequence in a later epoch), seed or split: another mask
    for other in (mlm_mask(tokens, np.arange(200, 208), 0, "train", **args),
                  mlm_mask(tokens, np.arange(100, 108), 1, "train", **args),
                  mlm_mask(tokens, np.arange(100, 108), 0, "val", **args)):
        assert not np.array_equal(other[1], a[1])


# --- the encoder and its loss -----------------------------------------------------------------------------------


def test_the_encoder_sees_both_ways_but_not_across_documents():
    torch.manual_seed(0)
    model = GPT(_args()).eval()
    x = torch.randint(10, VOCAB, (1, 24))
    x[0, 11] = 2  # eos: document 0 is tokens 0..11, document 1 tokens 12..23
    y = x.clone()
    y[0, 20] = (y[0, 20] + 1) % VOCAB  # a change late in document 1
    with torch.no_grad():
        a, b = model(x), model(y)  # no document mask: one sequence
        assert not torch.allclose(a[0, 12:20], b[0, 12:20])  # earlier tokens see a later one (bidirectional)
        assert not torch.allclose(a[0, :12], b[0, :12])
        am, bm = model(x, mask=document_mask(x, 2)), model(y, mask=document_mask(y, 2))
    assert torch.equal(am[0, :12], bm[0, :12])  # document 0 does not see document 1
    assert not torch.allclose(am[0, 12:20], bm[0, 12:20])
    causal = GPT(_args(objective="clm")).eval()
    causal.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(causal(x)[0, :20], causal(y)[0, :20])  # the same weights, causal: the past only


def test_the_loss_counts_the_masked_positions_only(tokens, sp):
    torch.manual_seed(0)
    args = _args(sp)
    model = GPT(args)
    task = _task(tokens, sp, args)
    b = task.batch(task.train.rows(np.arange(4)), "cpu", np.arange(4))
    assert 0.05 < b["select"].float().mean() < 0.3 and torch.equal(b["select"], b["y"] != -100)
    loss = task.loss(model, b, contextlib.nullcontext())
    with torch.no_grad():
        logits = model(b["x"], mask=b["mask"])
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b["y"].clamp(min=0), reduction="none")
    assert loss.item() == pytest.approx(per_token[b["select"]].mean().item(), rel=1e-5)
    # not the mean over every position: at initialization every token's loss is near ln(vocab), so the two
    # means differ by a few thousandths only; a tolerance of 1e-3 failed on one fresh clone (0.0009 apart)
    assert loss.item() != pytest.approx(per_token.mean().item(), rel=1e-5)
    loss.backward()  # the unmasked positions' logits get no gradient: their targets are -100
    y2 = b["y"].clone()
    y2[~b["select"]] = 7  # labels that are not counted may be anything
    assert task.loss(model, {**b, "y": y2}, contextlib.nullcontext()).item() == pytest.approx(loss.item())


def _steps(model, opt, task, stream, plan, first: int, n: int) -> list[float]:
    """The loop's steps (trainer/loop.py train_step) on one worker."""
    losses = []
    for step in range(first, first + n):
        total = 0.0
        for micro in range(plan.grad_accum):
            start = micro_batch_start(step, micro, 0, plan)
            rows = task.train.rows(stream.indices(start, plan.micro_batch_size))
            b = task.batch(rows, "cpu", np.arange(start, start + plan.micro_batch_size))
            loss = task.loss(model, b, contextlib.nullcontext())
            (loss / plan.grad_accum).backward()
            total += loss.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total / plan.grad_accum)
    return losses


def test_mlm_training_resumes_exactly_and_learns(tokens, sp, tmp_path):
    args = _args(sp)
    task = _task(tokens, sp, args)
    plan = BatchPlan(8, 4, 1)
    stream = SampleStream(len(task.train), 0)

    def fresh():
        torch.manual_seed(0)
        m = GPT(args)
        return m, torch.optim.AdamW(m.parameters(), lr=3e-3)

    whole, opt = fresh()
    losses = _steps(whole, opt, task, stream, plan, 0, 8)
    assert sum(losses[-2:]) < sum(losses[:2])  # it learns
    first, opt1 = fresh()
    _steps(first, opt1, task, stream, plan, 0, 4)
    msd, osd = ckpt.full_state(first, opt1)
    path = ckpt.save_checkpoint(tmp_path / "c", msd, osd, ckpt.gather_rng(), {"step": 4, "samples": 32,
                                "tokens_seen": 0}, args, {}, None)
    resumed, opt2 = fresh()
    torch.manual_seed(99)
    ckpt.restore(path, resumed, opt2, rank=0)
    _steps(resumed, opt2, task, stream, plan, 4, 4)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # two workers read the same global batches with the same masks (the loss weighs them per micro-batch)
    for step in (0, 5):
        seen = {}
        for p, world in ((plan, 1), (BatchPlan(8, 2, 2), 2)):
            rows = {}
            for micro in range(p.grad_accum):
                for rank in range(world):
                    start = micro_batch_start(step, micro, rank, p)
                    b = task.batch(task.train.rows(stream.indices(start, 2 if world == 2 else 4)), "cpu",
                                   np.arange(start, start + (2 if world == 2 else 4)))
                    for k in range(len(b["x"])):
                        rows[start + k] = (b["x"][k], b["y"][k])
            seen[world] = rows
        assert seen[1].keys() == seen[2].keys() and len(seen[1]) == 8
        assert all(torch.equal(seen[1][i][0], seen[2][i][0]) and torch.equal(seen[1][i][1], seen[2][i][1])
                   for i in seen[1])


def test_masked_perplexity_and_validation_agree(tokens, sp, tok, tmp_path):
    from gristmill.config import PretrainConfig
    from gristmill.trainer.evaluate import masked_perplexity

    torch.manual_seed(0)
    args = _args(sp)
    model = GPT(args).eval()
    task = _task(tokens, sp, args)
    val = task.evaluate(model, 0, 1, PretrainConfig(micro_batch_size=4, eval_batches=0), "cpu",
                        contextlib.nullcontext())
    report = masked_perplexity(model, str(tokens), (1, 2, 3), sp.eos_id(), batch_size=4)
    assert report["objective"] == "mlm" and report["masked_tokens"] == val["val_tokens"] > 0
    assert report["loss"] == pytest.approx(val["val_loss"], rel=1e-6)
    assert report["accuracy"] == pytest.approx(val["val_accuracy"])
    assert report["perplexity"] == pytest.approx(np.exp(report["loss"]))
    n_tokens = len(TokenSplit(tokens, "val")) * 32
    assert 0.08 < report["masked_tokens"] / n_tokens < 0.2


# --- what an MLM checkpoint is refused for --------------------------------------------------------------------------


def test_causal_only_commands_refuse_an_mlm_checkpoint_and_say_what_to_use(tok, sp, tmp_path):
    from gristmill import api
    from gristmill.trainer.launch import prepare

    torch.manual_seed(0)
    path = _save(tmp_path / "checkpoint_00000001", GPT(_args(sp)), tok)
    with pytest.raises(ckpt.CheckpointError, match=r"masked-language-model encoder.*generation.*clm.*fill-mask"):
        api.generate(str(path), "The mill", device="cpu")
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n")
    with pytest.raises(ckpt.CheckpointError, match="multiple choice.*causal checkpoint"):
        api.evaluate(str(path), mc=[str(mc)], device="cpu")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    cfg = GristmillConfig.model_validate({"sft": {"init_checkpoint": str(path), "files": [str(sft)],
                                                  "storage_path": str(tmp_path / "runs"), "seq_len": 32}})
    with pytest.raises(DataError, match="SFT.*encoder cannot.*finetune-cls.*clm"):
        prepare(cfg, "sft")
    with pytest.raises(ValueError, match="does not generate"):
        from gristmill.trainer.model import KVCache

        model = ckpt.load_model(path)
        model(torch.tensor([[5, 6]]), cache=KVCache(model.args, 1, 8, "cpu", torch.float32))


def test_classification_pooling_is_checked_against_the_objective():
    from gristmill.trainer.launch import cls_pooling

    assert cls_pooling("auto", "mlm", "c") == "mean" and cls_pooling("auto", "clm", "c") == "last"
    assert cls_pooling("first", "mlm", "c") == "first"
    with pytest.raises(DataError, match="last is for causal.*first or mean"):
        cls_pooling("last", "mlm", "c")
    with pytest.raises(DataError, match="mean is for MLM encoders.*use last"):
        cls_pooling("mean", "clm", "c")
    assert ClsConfig().pooling == "auto"


def test_first_token_pooling_puts_bos_before_each_text(sp, tmp_path):
    from gristmill.trainer.finetune_data import cls_examples

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in
                            [("the corpus", "a"), ("token shards", "b"), ("a trainer", "a")]))
    first = cls_examples(sp, ClsConfig(files=(str(data),), pooling="first", val_fraction=0.0, seq_len=16), "train")
    mean = cls_examples(sp, ClsConfig(files=(str(data),), pooling="mean", val_fraction=0.0, seq_len=16), "train")
    assert (first.ids[:, 0] == sp.bos_id()).all() and not (mean.ids[:, 0] == sp.bos_id()).any()
    assert np.array_equal(first.ids[:, 1:5], mean.ids[:, :4]) and np.array_equal(first.last, mean.last + 1)
    assert (first.ids[np.arange(3), first.last] == sp.eos_id()).all()


# --- export to transformers -----------------------------------------------------------------------------------------


def test_export_gives_a_masked_lm_with_the_native_logits_and_a_fill_mask_pipeline(tok, sp, tmp_path):
    import transformers

    from gristmill.trainer.export import export_hf

    torch.manual_seed(0)
    native = GPT(_args(sp, tie_embeddings=False)).eval()
    with torch.no_grad():  # norms away from 1, so that a wrong mapping shows
        for p in native.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    path = _save(tmp_path / "checkpoint_00000001", native, tok)
    out = export_hf(path, tmp_path / "hf")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "EuroBertForMaskedLM"
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for line in _doc_lines()[10:20]:
        ids = sp.encode(line)[:48]
        ids[len(ids) // 2] = sp.piece_to_id("<mask>")
        x = torch.tensor([ids])
        with torch.no_grad():
            diff = (native(x) - hf(x).logits).abs().max().item()
        assert diff <= 1e-4, diff
    # a padded batch: transformers' attention mask does what the native key mask does
    x = torch.tensor([sp.encode("The corpus <mask> shards")[:6] + [3, 3], sp.encode("tokenize the corpus again")[:8]])
    real = torch.tensor([[1] * 6 + [0, 0], [1] * 8])
    with torch.no_grad():
        mine = native(x, mask=real.bool()[:, None, None, :])
        theirs = hf(x, attention_mask=real).logits
    assert (mine - theirs)[real.bool()].abs().max().item() <= 1e-4
    fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=hf_tok)
    preds = fill("The corpus <mask> shards.")
    assert len(preds) == 5 and all("<mask>" not in p["sequence"] or p["token"] == sp.piece_to_id("<mask>")
                                   for p in preds)
    x = torch.tensor([hf_tok("The corpus <mask> shards.")["input_ids"]])
    pos = x[0].tolist().index(sp.piece_to_id("<mask>"))
    with torch.no_grad():
        best = native(x)[0, pos].softmax(-1).topk(5)
    assert [p["token"] for p in preds] == best.indices.tolist()
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "right"
    # the card's snippet runs as written: five fill-mask predictions printed
    printed = training.run_card_snippet(out)
    assert printed.count("'score'") == 5 and str(tmp_path) not in (out / "README.md").read_text()


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_an_encoder_classifier_exports_as_sequence_classification_with_equal_logits(tok, sp, tmp_path, pooling):
    import transformers

    from gristmill.trainer.export import export_hf

    torch.manual_seed(0)
    native = build_model(_args(sp, n_classes=3, pooling=pooling)).eval()
    with torch.no_grad():
        native.cls_dense.bias.uniform_(-0.5, 0.5)
        native.cls_head.bias.uniform_(-0.5, 0.5)
    path = _save(tmp_path / "checkpoint_00000001", native, tok, task="cls", classes=["de", "en", "fr"])
    out = export_hf(path, tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "EuroBertForSequenceClassification"
    assert hf.config.id2label == {0: "de", 1: "en", 2: "fr"}
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = ["The corpus shards", "tokenize the corpus again, then train", "a"]
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    first = [sp.bos_id()] if pooling == "first" else []
    for row, text in zip(enc["input_ids"].tolist(), texts):  # the fine-tuning framing (cls_examples)
        expected = first + sp.encode(text) + [sp.eos_id()]
        assert row[: len(expected)] == expected and set(row[len(expected):]) <= {sp.pad_id()}
    last = enc["attention_mask"].sum(1) - 1
    with torch.no_grad():
        mine = native(enc["input_ids"], last)
        theirs = hf(**enc).logits
    assert (mine - theirs).abs().max().item() <= 1e-4
    assert not torch.allclose(mine[0], mine[1])
    printed = training.run_card_snippet(out)  # the card's snippet: one label of the three, with its score
    assert "'label'" in printed and any(f"'{c}'" in printed for c in ("de", "en", "fr"))
