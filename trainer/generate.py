"""Text generation from a checkpoint: sampling (temperature, top-k, top-p), stop sequences, a KV cache,
streaming, and chat through the tokenizer's ChatML template.

Chat prompts are encoded by :func:`trainer.finetune_data.encode_chat` (the ChatML template of
tokenizer_config.json, segment by segment, as fine-tuning saw it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from gristmill.sampling import SamplingConfig
from gristmill.trainer.finetune_data import IM_END
from gristmill.trainer.model import GPT, KVCache


def load_tokenizer(checkpoint: str | Path):
    import sentencepiece as spm

    from gristmill.trainer.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(checkpoint) / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the checkpoint carries no tokenizer (pass --tokenizer)")
    return spm.SentencePieceProcessor(model_file=str(path))


def default_stop_ids(sp) -> tuple[int, ...]:
    ids = [sp.eos_id()]
    if sp.piece_to_id(IM_END) != sp.unk_id():
        ids.append(sp.piece_to_id(IM_END))
    return tuple(i for i in ids if i >= 0)


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token once the mass before it already reaches top_p (the top token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def generate_ids(model: GPT, prompt: list[int], cfg: SamplingConfig) -> Iterator[int]:
    """Yield new token ids one at a time (for streaming). Stops at a stop id or max_new_tokens;
    stop strings are the caller's business (they need the decoded text)."""
    device = next(model.parameters()).device
    vocab = model.args.vocab_size
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    limit = model.args.max_seq_len
    if len(prompt) >= limit:
        prompt = prompt[-(limit - 1):]  # keep the end of an over-long prompt
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    cache = KVCache(model.args, 1, limit, device, next(model.parameters()).dtype) if cfg.use_cache else None
    logits = model(ids, cache=cache)[:, -1]
    for _ in range(cfg.max_new_tokens):
        logits = logits[:, :vocab].float()  # padded rows of the table are never real tokens
        if cfg.temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = _filter(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
        token = int(nxt)
        if token in cfg.stop_ids:
            return
        yield token
        ids = torch.cat([ids, nxt], dim=1)
        if ids.shape[1] >= limit:
            return
        logits = (model(nxt, cache=cache) if cache is not None else model(ids))[:, -1]


def generate_text(model: GPT, sp, prompt: str | list[int], cfg: SamplingConfig, on_text=None) -> str:
    """Generate a completion of ``prompt`` (text, or ids such as a chat template's); ``on_text(new_text)``
    streams it as it grows (never cutting a character that later tokens complete)."""
    if not cfg.stop_ids:
        cfg = SamplingConfig(**{**cfg.__dict__, "stop_ids": default_stop_ids(sp)})
    out: list[int] = []
    shown = ""
    for token in generate_ids(model, sp.encode(prompt) if isinstance(prompt, str) else prompt, cfg):
        out.append(token)
        text = sp.decode(out)
        cut = min((text.find(s) for s in cfg.stop if s and s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        if on_text is not None and len(text) > len(shown) and not text.endswith("\ufffd"):
            on_text(text[len(shown):])
            shown = text
        if cut >= 0:
            return text
    text = sp.decode(out)
    if on_text is not None and len(text) > len(shown):
        on_text(text[len(shown):])
    return text
