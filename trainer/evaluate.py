"""``gristmill eval``: perplexity on validation token shards and k-shot multiple choice by log-likelihood.

For an MLM encoder (``model.objective: mlm``) the perplexity is the masked-token one: exp of the mean
cross-entropy of the original tokens at the masked positions (:func:`masked_perplexity`), with the masks
validation uses during training; multiple choice needs a causal model.

Multiple choice follows the usual log-likelihood protocol (as lm-evaluation-harness does): each choice
is scored by the sum of the log-probabilities of its tokens after the prompt; ``accuracy`` takes the
best sum, ``accuracy_norm`` the best sum per character of the choice (fairer to long choices). The
k shots are other items of the same file, chosen with a seed, never the item itself.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch

from gristmill.tokenizer.tokens import TokenSplit, read_token_manifest
from gristmill.trainer.model import GPT

PROMPT = "Question: {question}\nAnswer:"


@torch.no_grad()
def perplexity(model: GPT, data_dir: str, batch_size: int = 8, max_batches: int = 0) -> dict:
    manifest = read_token_manifest(data_dir)
    val = TokenSplit(data_dir, "val", manifest)
    if len(val) == 0:
        raise ValueError(f"{data_dir}: the val split is empty")
    if manifest["vocab_size"] > model.args.vocab_size:
        raise ValueError(f"{data_dir} uses a vocabulary of {manifest['vocab_size']}, the model {model.args.vocab_size}")
    device = next(model.parameters()).device
    n = len(val) if not max_batches else min(len(val), max_batches * batch_size)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        rows = torch.from_numpy(val.rows(np.arange(start, min(n, start + batch_size)))).to(device)
        logits = model(rows[:, :-1]).float()
        total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), rows[:, 1:], reduction="sum"))
        count += rows[:, 1:].numel()
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count, "sequences": n}


@torch.no_grad()
def masked_perplexity(model: GPT, data_dir: str, special_ids: tuple[int, ...], eos_id: int, batch_size: int = 8,
                      max_batches: int = 0, seed: int = 0) -> dict:
    """An MLM encoder's masked-token loss, perplexity and accuracy on the val split: each row masked as
    validation during training masks it (:func:`~gristmill.trainer.data.mlm_mask`, the val stream of ``seed``),
    within-document attention, the loss over the masked positions only."""
    from gristmill.trainer.data import mlm_mask
    from gristmill.trainer.model import document_mask

    manifest = read_token_manifest(data_dir)
    val = TokenSplit(data_dir, "val", manifest)
    if len(val) == 0:
        raise ValueError(f"{data_dir}: the val split is empty")
    a = model.args
    if manifest["vocab_size"] > a.vocab_size:
        raise ValueError(f"{data_dir} uses a vocabulary of {manifest['vocab_size']}, the model {a.vocab_size}")
    device = next(model.parameters()).device
    n = len(val) if not max_batches else min(len(val), max_batches * batch_size)
    total, count, correct = 0.0, 0, 0
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        tokens = val.rows(idx)[:, : min(val.seq_len, a.max_seq_len)]
        inputs, labels = mlm_mask(tokens, idx, seed, "val", a.mask_id, a.vocab_size, special_ids, a.mask_rate)
        y = torch.from_numpy(labels).to(device)
        select = y != -100
        logits = model(torch.from_numpy(inputs).to(device), mask=document_mask(torch.from_numpy(tokens).to(device),
                       eos_id), select=select).float()[:, : a.vocab_size]
        total += float(torch.nn.functional.cross_entropy(logits, y[select], reduction="sum"))
        count += int(select.sum())
        correct += int((logits.argmax(-1) == y[select]).sum())
    loss = total / count
    return {"objective": "mlm", "loss": loss, "perplexity": math.exp(loss), "accuracy": correct / count,
            "masked_tokens": count, "sequences": n}


def read_mc(path: str | Path) -> list[dict]:
    items = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if not {"question", "choices", "answer"} <= item.keys():
            raise ValueError(f"{path}:{n}: a multiple-choice item needs question, choices and answer")
        if not 0 <= int(item["answer"]) < len(item["choices"]):
            raise ValueError(f"{path}:{n}: answer {item['answer']} is not an index into its "
                             f"{len(item['choices'])} choices")
        items.append(item)
    return items


def _shots(items: list[dict], i: int, k: int, seed: int) -> str:
    pool = [j for j in range(len(items)) if j != i]
    chosen = random.Random(seed * 1_000_003 + i).sample(pool, min(k, len(pool)))
    return "".join(PROMPT.format(question=items[j]["question"]) + " " + items[j]["choices"][items[j]["answer"]] + "\n\n"
                   for j in chosen)


@torch.no_grad()
def choice_logprobs(model: GPT, context: list[int], continuations: list[list[int]]) -> list[float]:
    """Sum of log p(continuation tokens | context) for each continuation (the context cut from the left to fit)."""
    device = next(model.parameters()).device
    limit = model.args.max_seq_len
    out = []
    for cont in continuations:
        ids = (context + cont)[-(limit + 1):]
        n_cont = min(len(cont), len(ids) - 1)
        x = torch.tensor([ids[:-1]], device=device)
        logp = model(x).float()[0, :, : model.args.vocab_size].log_softmax(-1)
        targets = torch.tensor(ids[1:], device=device)
        picked = logp[torch.arange(len(ids) - 1, device=device), targets]
        out.append(float(picked[-n_cont:].sum()))
    return out


def multiple_choice(model: GPT, sp, items: list[dict], shots: int = 0, seed: int = 0) -> dict:
    """Accuracy (the choice of highest log-likelihood, and per character), and the correct answer's bits per
    UTF-8 byte over all items: a continuous score that moves before accuracy leaves chance."""
    correct = correct_norm = 0
    answer_bits = answer_bytes = 0.0
    for i, item in enumerate(items):
        prompt = _shots(items, i, shots, seed) + PROMPT.format(question=item["question"])
        context = sp.encode(prompt)
        conts = [sp.encode(" " + c) for c in item["choices"]]
        scores = choice_logprobs(model, context, conts)
        norm = [s / max(1, len(c)) for s, c in zip(scores, item["choices"])]
        answer = int(item["answer"])
        correct += int(np.argmax(scores)) == answer
        correct_norm += int(np.argmax(norm)) == answer
        answer_bits += -scores[answer] / math.log(2)
        answer_bytes += len((" " + item["choices"][answer]).encode("utf-8"))
    n = len(items)
    chance = float(np.mean([1 / len(it["choices"]) for it in items])) if n else 0.0
    return {"items": n, "shots": shots, "accuracy": correct / n, "accuracy_norm": correct_norm / n, "chance": chance,
            "answer_bpb": answer_bits / answer_bytes if answer_bytes else float("nan")}
