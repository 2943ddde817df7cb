"""What the training loop trains on: a task is its train/val rows, how a batch of rows becomes
tensors, its loss, and its validation metrics. The loop (trainer/loop.py) is the same for all.

- ``pretrain``: next-token loss on token shards (rows of seq_len + 1 ids); with ``model.objective: mlm``,
  masked-token loss on the same shards (:class:`MLMTask`);
- ``sft``: next-token loss on chat rows, only on assistant tokens (labels -100 elsewhere);
- ``cls``: cross-entropy over classes from the last token's hidden state; accuracy and macro-F1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gristmill.config import GristmillConfig, LoopConfig
from gristmill.tokenizer.cache import local_tokens
from gristmill.tokenizer.tokens import TokenSplit, read_token_manifest
from gristmill.trainer.data import mlm_mask, val_indices
from gristmill.trainer.model import ModelArgs, document_mask, lm_loss

#: task → its config section (the loop settings and the task's data)
TASK_SECTIONS = {"pretrain": "pretrain", "sft": "sft", "cls": "finetune_cls"}


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks, in place (a no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def val_batches(n_val: int, rank: int, world: int, p: LoopConfig, device):
    """This rank's validation micro-batches with a weight per row: short or empty batches are padded with
    row 0 at weight 0, so every rank runs the same number of forward passes (FSDP's forward is a collective)."""
    for idx in val_indices(n_val, rank, world, p.micro_batch_size, p.eval_batches):
        weights = torch.zeros(p.micro_batch_size, dtype=torch.float64, device=device)
        weights[: len(idx)] = 1.0
        yield np.concatenate([idx, np.zeros(p.micro_batch_size - len(idx), dtype=np.int64)]), weights


class LMTask:
    """Next-token loss on fixed-width rows: pretraining (token shards) and SFT (ids + assistant-only labels)."""

    def __init__(self, train, val, seq_len: int):
        self.train, self.val, self.seq_len = train, val, seq_len

    @staticmethod
    def batch(rows, device, positions=None, split="train") -> dict:
        if isinstance(rows, np.ndarray):  # token shards: targets are the shifted ids
            t = torch.from_numpy(rows).to(device, non_blocking=True)
            return {"x": t[:, :-1], "y": t[:, 1:]}
        ids = torch.from_numpy(rows["ids"]).to(device, non_blocking=True)
        labels = torch.from_numpy(rows["labels"]).to(device, non_blocking=True)
        return {"x": ids[:, :-1], "y": labels[:, 1:]}

    def loss(self, model, b, autocast):
        with autocast:
            return lm_loss(model(b["x"]), b["y"])

    @torch.no_grad()
    def evaluate(self, model, rank: int, world: int, p: LoopConfig, device, autocast) -> dict:
        """Mean validation loss per target token over the first val rows (all ranks together)."""
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for idx, weights in val_batches(len(self.val), rank, world, p, device):
            b = self.batch(self.val.rows(idx), device)
            with autocast:
                logits = model(b["x"])
            per_token = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), b["y"], reduction="none", ignore_index=-100).double()
            counted = (b["y"] != -100).double()
            total[0] += (per_token.sum(dim=1) * weights).sum()
            total[1] += (counted.sum(dim=1) * weights).sum()
        all_sum(total)
        loss = float(total[0] / total[1]) if total[1] > 0 else float("nan")
        return {"val_loss": loss, "val_ppl": math.exp(loss) if loss < 50 else float("inf"), "val_tokens": int(total[1])}


class MLMTask:
    """Masked language modelling on token shards (BERT): the first seq_len tokens of each row, masked on the fly
    by :func:`~gristmill.trainer.data.mlm_mask` (deterministic per data position); the loss and the accuracy
    count the masked positions only.

    Rows were packed for causal training: documents joined by eos, cut at row boundaries. Attention stays
    within each document (:func:`~gristmill.trainer.model.document_mask`, from the unmasked ids: eos, bos and
    pad are never masked), so a row is a batch of whole or cut documents, none of which sees another."""

    def __init__(self, train, val, seq_len: int, args: ModelArgs, special_ids: tuple[int, ...], eos_id: int,
                 seed: int):
        self.train, self.val, self.seq_len = train, val, seq_len
        self.args, self.special_ids, self.eos_id, self.seed = args, special_ids, eos_id, seed

    def batch(self, rows, device, positions=None, split="train") -> dict:
        tokens = rows[:, : self.seq_len]
        inputs, labels = mlm_mask(tokens, positions, self.seed, split, self.args.mask_id, self.args.vocab_size,
                                  self.special_ids, self.args.mask_rate)
        y = torch.from_numpy(labels).to(device, non_blocking=True)
        return {"x": torch.from_numpy(inputs).to(device, non_blocking=True), "y": y, "select": y != -100,
                "mask": document_mask(torch.from_numpy(tokens).to(device, non_blocking=True), self.eos_id)}

    def loss(self, model, b, autocast):
        with autocast:
            logits = model(b["x"], mask=b["mask"], select=b["select"])  # the masked positions' logits only
        return lm_loss(logits, b["y"][b["select"]])

    @torch.no_grad()
    def evaluate(self, model, rank: int, world: int, p: LoopConfig, device, autocast) -> dict:
        """Masked-token loss, perplexity and accuracy over the first val rows (fixed masks: the val stream)."""
        total = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, masked tokens, correct
        for idx, weights in val_batches(len(self.val), rank, world, p, device):
            b = self.batch(self.val.rows(idx), device, idx, "val")
            with autocast:
                logits = model(b["x"], mask=b["mask"]).float()[..., : self.args.vocab_size]
            counted = b["select"].double()
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b["y"], reduction="none",
                                                   ignore_index=-100).double()
            correct = (logits.argmax(-1) == b["y"]).double() * counted
            total[0] += (ce.sum(1) * weights).sum()
            total[1] += (counted.sum(1) * weights).sum()
            total[2] += (correct.sum(1) * weights).sum()
        all_sum(total)
        loss = float(total[0] / total[1]) if total[1] > 0 else float("nan")
        return {"val_loss": loss, "val_ppl": math.exp(loss) if loss < 50 else float("inf"),
                "val_accuracy": float(total[2] / total[1]) if total[1] > 0 else float("nan"),
                "val_tokens": int(total[1])}


class ClsTask:
    """Cross-entropy over classes from the last token's hidden state; accuracy and macro-F1 on validation."""

    def __init__(self, train, val, seq_len: int, classes: list[str]):
        self.train, self.val, self.seq_len, self.classes = train, val, seq_len, classes

    @staticmethod
    def batch(rows, device, positions=None, split="train") -> dict:
        return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in rows.items()}

    def loss(self, model, b, autocast):
        with autocast:
            logits = model(b["ids"], b["last"])
        return torch.nn.functional.cross_entropy(logits.float(), b["labels"])

    @torch.no_grad()
    def evaluate(self, model, rank: int, world: int, p: LoopConfig, device, autocast) -> dict:
        from gristmill.trainer.finetune_data import macro_f1

        n = len(self.classes)
        confusion = torch.zeros(n, n, dtype=torch.float64, device=device)  # gold × predicted, summed over ranks
        loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
        for idx, weights in val_batches(len(self.val), rank, world, p, device):
            b = self.batch(self.val.rows(idx), device)
            with autocast:
                logits = model(b["ids"], b["last"]).float()
            ce = torch.nn.functional.cross_entropy(logits, b["labels"], reduction="none").double()
            loss_sum += (ce * weights).sum()
            for g, q, w in zip(b["labels"].tolist(), logits.argmax(-1).tolist(), weights.tolist()):
                confusion[g, q] += w
        all_sum(confusion)
        all_sum(loss_sum)
        cm = confusion.cpu().numpy()
        count = cm.sum()
        gold = np.repeat(np.arange(n), cm.sum(axis=1).astype(int))
        pred = np.concatenate([np.repeat(np.arange(n), cm[g].astype(int)) for g in range(n)]) if count else np.zeros(0)
        return {"val_loss": float(loss_sum[0] / max(count, 1)), "val_accuracy": float(np.trace(cm) / max(count, 1)),
                "val_macro_f1": macro_f1(pred, gold, n), "val_examples": int(count)}


def build_task(task: str, cfg: GristmillConfig, tokenizer_dir: str | None, args: ModelArgs | None = None):
    """The task's train/val data, built identically on every worker."""
    import sentencepiece as spm

    p = getattr(cfg, TASK_SECTIONS[task])
    if task == "pretrain":
        if p.mixture:
            from gristmill.trainer.mixture import MixedSplit

            names = [s.name for s in p.mixture]
            dirs = [local_tokens(s.data, p.data_cache) for s in p.mixture]  # an object store's: copied once per node
            train = MixedSplit([TokenSplit(d, "train") for d in dirs], names,
                               [s.weight for s in p.mixture], [s.max_epochs for s in p.mixture])
            val = MixedSplit([TokenSplit(d, "val") for d in dirs], names)
        else:
            data = local_tokens(p.data, p.data_cache)  # an object store's: copied once per node
            manifest = read_token_manifest(data)
            train, val = TokenSplit(data, "train", manifest), TokenSplit(data, "val", manifest)
        if args is not None and args.objective == "mlm":
            sp = spm.SentencePieceProcessor(model_file=str(Path(tokenizer_dir) / "tokenizer.model"))
            specials = tuple(i for i in (sp.bos_id(), sp.eos_id(), sp.pad_id()) if i >= 0)
            return MLMTask(train, val, train.seq_len, args, specials, sp.eos_id(), p.seed)
        return LMTask(train, val, train.seq_len)

    from gristmill.trainer.finetune_data import cls_examples, sft_examples

    sp = spm.SentencePieceProcessor(model_file=str(Path(tokenizer_dir) / "tokenizer.model"))
    if task == "sft":
        return LMTask(sft_examples(sp, p, "train", p.seed), sft_examples(sp, p, "val", p.seed), p.seq_len)
    train, val = cls_examples(sp, p, "train", p.seed), cls_examples(sp, p, "val", p.seed)
    return ClsTask(train, val, p.seq_len, train.classes)
