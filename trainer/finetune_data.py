"""Fine-tuning data: chat / instruction records → token ids with assistant-only labels; labelled text
→ ids for classification. Pure functions of (record, tokenizer, config); the loop only sees arrays.

Chat template (ChatML, the one in tokenizer_config.json): every message is
``<|im_start|>{role}\\n{content}<|im_end|>\\n``. Labels are -100 everywhere except on the content of
assistant messages and their ``<|im_end|>`` (so the model learns to stop). Segments are encoded one
by one, so label boundaries are exact; generation in chat mode encodes prompts the same way.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gristmill.errors import GristmillError

IGNORE = -100
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class FinetuneDataError(GristmillError, ValueError):
    """A fine-tuning file that cannot be used; the message names the file and what is wrong."""


# --- reading records --------------------------------------------------------------------------------


def _records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise FinetuneDataError(f"{path}: a .json file must hold an array of records")
        return data
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise FinetuneDataError(f"{path}:{n}: not JSON ({e.msg})") from None
    return out


def _oasst_best_path(node: dict) -> list[dict]:
    """An OpenAssistant message tree → the conversation along the best-ranked replies."""
    messages = []
    while node:
        role = "assistant" if node.get("role") == "assistant" else "user"
        messages.append({"role": role, "content": node["text"]})
        replies = node.get("replies") or []
        node = min(replies, key=lambda r: r.get("rank") if r.get("rank") is not None else 1e9) if replies else None
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    return messages


def to_messages(rec: dict) -> list[dict] | None:
    """One record in any supported format → a conversation, or None if it has no assistant turn."""
    if "messages" in rec:
        msgs = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
    elif "prompt" in rec and isinstance(rec["prompt"], dict):
        msgs = _oasst_best_path(rec["prompt"])
    elif "instruction" in rec:
        inp, out = rec.get("input", ""), rec.get("output", rec.get("response"))
        if out is None and rec.get("instances"):  # self-instruct: the first instance
            inp, out = rec["instances"][0].get("input", ""), rec["instances"][0].get("output")
        if out is None:
            return None
        user = rec["instruction"] + (f"\n\n{inp}" if inp else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": out}]
    elif "question" in rec and "answer" in rec:  # GSM8K
        msgs = [{"role": "user", "content": rec["question"]}, {"role": "assistant", "content": rec["answer"]}]
    else:
        raise FinetuneDataError(f"unknown record format (keys {sorted(rec)[:6]}): expected messages, "
                                "instruction/output, question/answer or an OpenAssistant tree")
    if not any(m["role"] == "assistant" and m["content"] for m in msgs):
        return None
    return msgs


def read_conversations(files, max_per_file: int = 0) -> list[tuple[str, list[dict]]]:
    """(key, messages) for every usable record of every file, in file order; key = file name + position."""
    out = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FinetuneDataError(f"{path}: no such file")
        recs = _records(path)
        if max_per_file:
            recs = recs[:max_per_file]
        for i, rec in enumerate(recs):
            try:
                msgs = to_messages(rec)
            except FinetuneDataError as e:
                raise FinetuneDataError(f"{path}, record {i + 1}: {e}") from None
            if msgs:
                out.append((f"{path.name}#{i}", msgs))
    if not out:
        raise FinetuneDataError(f"no usable examples in {list(files)}")
    return out


def is_val(key: str, val_fraction: float, seed: int = 0) -> bool:
    h = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


# --- encoding ---------------------------------------------------------------------------------------


def encode_chat(sp, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation (labels: the id on assistant content + <|im_end|>, else -100)."""
    start, end = sp.piece_to_id(IM_START), sp.piece_to_id(IM_END)
    if start == sp.unk_id() or end == sp.unk_id():
        raise FinetuneDataError("the tokenizer has no <|im_start|>/<|im_end|> pieces (tokenizer.user_defined_symbols)")
    newline = sp.encode("\n")
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        head = [start, *sp.encode(m["role"]), *newline]
        body = sp.encode(m["content"])
        learn = m["role"] == "assistant"
        ids += head + body + [end] + newline
        learned = body + [end] if learn else [IGNORE] * (len(body) + 1)
        labels += [IGNORE] * len(head) + learned + [IGNORE] * len(newline)
    if add_generation_prompt:
        head = [start, *sp.encode("assistant"), *newline]
        ids += head
        labels += [IGNORE] * len(head)
    return ids, labels


@dataclass
class Examples:
    """Fixed-width rows: ``ids`` (n, seq_len + 1) and ``labels`` (n, seq_len + 1); inputs are ids[:, :-1],
    targets labels[:, 1:]."""

    ids: np.ndarray
    labels: np.ndarray
    stats: dict

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"ids": self.ids[indices], "labels": self.labels[indices]}


def build_sft(encoded: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int, packing: bool) -> Examples:
    width = seq_len + 1
    truncated = sum(len(ids) > width for ids, _ in encoded)
    stats = {"examples": len(encoded), "truncated": truncated}
    if packing:
        ids = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in encoded]) if encoded else np.zeros(0, np.int64)
        lab = (np.concatenate([np.asarray(lb, dtype=np.int64) for _, lb in encoded]) if encoded
               else np.zeros(0, np.int64))
        n = max(1, -(-len(ids) // width))
        pad = n * width - len(ids)
        ids = np.concatenate([ids, np.full(pad, pad_id)]).reshape(n, width)
        lab = np.concatenate([lab, np.full(pad, IGNORE)]).reshape(n, width)
    else:
        ids = np.full((len(encoded), width), pad_id, dtype=np.int64)
        lab = np.full((len(encoded), width), IGNORE, dtype=np.int64)
        for k, (row_ids, row_labels) in enumerate(encoded):
            row_ids, row_labels = row_ids[:width], row_labels[:width]
            ids[k, : len(row_ids)] = row_ids
            lab[k, : len(row_labels)] = row_labels
    # a row whose targets are all ignored teaches nothing (an assistant turn cut off entirely)
    useful = (lab[:, 1:] != IGNORE).any(axis=1)
    stats["rows"] = int(useful.sum())
    stats["rows_without_assistant_tokens"] = int((~useful).sum())
    stats["assistant_tokens"] = int((lab[:, 1:] != IGNORE).sum())
    return Examples(ids[useful], lab[useful], stats)


def sft_examples(sp, cfg, split: str, seed: int = 0) -> Examples:
    """The train or val rows of an SFT config (every worker builds the same, deterministically)."""
    convs = read_conversations(cfg.files, cfg.max_examples_per_file)
    chosen = [(k, m) for k, m in convs if is_val(k, cfg.val_fraction, seed) == (split == "val")]
    if cfg.system_prompt:
        system = {"role": "system", "content": cfg.system_prompt}
        chosen = [(k, m if m[0]["role"] == "system" else [system, *m]) for k, m in chosen]
    pad = sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id()
    return build_sft([encode_chat(sp, m) for _, m in chosen], cfg.seq_len, pad, cfg.packing)


# --- classification ---------------------------------------------------------------------------------


def read_labelled(files, text_field: str, label_field: str) -> list[tuple[str, str, str]]:
    """(key, text, label) from JSONL or TSV (with a header row) files."""
    out = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FinetuneDataError(f"{path}: no such file")
        if path.suffix in (".tsv", ".csv"):
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ",", quoting=csv.QUOTE_NONE)
                rows = list(reader)
        else:
            rows = _records(path)
        for i, r in enumerate(rows):
            if text_field not in r or label_field not in r:
                raise FinetuneDataError(f"{path}, record {i + 1}: no field {text_field!r} or {label_field!r} "
                                        f"(has {sorted(r)[:6]})")
            out.append((f"{path.name}#{i}", str(r[text_field]), str(r[label_field])))
    if not out:
        raise FinetuneDataError(f"no labelled examples in {list(files)}")
    return out


@dataclass
class ClsExamples:
    ids: np.ndarray  # (n, seq_len), padded
    last: np.ndarray  # index of each row's last real token
    labels: np.ndarray  # class index
    classes: list[str]
    stats: dict

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"ids": self.ids[indices], "last": self.last[indices], "labels": self.labels[indices]}


def cls_examples(sp, cfg, split: str, seed: int = 0) -> ClsExamples:
    rows = read_labelled(cfg.files, cfg.text_field, cfg.label_field)
    classes = list(cfg.labels) or sorted({label for _, _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    per_label: dict[str, int] = {}
    kept, skipped = [], 0
    for key, text, label in rows:  # the per-label cap is applied before the split, so both splits see it
        if label not in index:
            skipped += 1
            continue
        per_label[label] = per_label.get(label, 0) + 1
        if cfg.max_examples_per_label and per_label[label] > cfg.max_examples_per_label:
            continue
        if is_val(key, cfg.val_fraction, seed) == (split == "val"):
            kept.append((text, index[label]))
    pad = sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id()
    ids = np.full((len(kept), cfg.seq_len), pad, dtype=np.int64)
    last = np.zeros(len(kept), dtype=np.int64)
    # each text ends with eos: the last token's state has seen the whole text and the same token always closes it.
    # First-token pooling (an MLM encoder's) reads a <s> put before each text: BERT's [CLS]
    first = [sp.bos_id()] if getattr(cfg, "pooling", "auto") == "first" else []
    for k, (text, _) in enumerate(kept):
        toks = first + (sp.encode(text)[: cfg.seq_len - 1 - len(first)]) + [sp.eos_id()]
        ids[k, : len(toks)] = toks
        last[k] = len(toks) - 1
    labels = np.asarray([y for _, y in kept], dtype=np.int64)
    stats = {"examples": len(kept), "classes": len(classes), "skipped_unlisted_label": skipped}
    return ClsExamples(ids, last, labels, classes, stats)


def macro_f1(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> float:
    f1s = []
    for c in range(n_classes):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        if tp + fp + fn == 0:
            continue  # a class absent from both: not part of the average
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0
