"""A transformer you can read in one sitting: a causal language model (GPT), or the same network as a
bidirectional encoder trained by masked language modelling (``objective: mlm``, BERT's recipe).

Llama-style: RoPE, RMSNorm, SwiGLU, grouped-query attention through ``scaled_dot_product_attention``,
optional tied embeddings, no biases. The layout and the RoPE convention (rotate-half) are those of
Hugging Face's ``LlamaForCausalLM``, so export is a renaming of tensors (trainer/export.py).

The embedding table is padded to a multiple of ``vocab_multiple`` (64): ids beyond the tokenizer's
vocabulary never occur in the data and their logits are never targets.

Eager CPU work in fp32 (training without torch.compile) runs a few hand-written autograd functions, the
same values up to rounding: RMSNorm, SwiGLU and the loss with fewer passes and temporaries, q/k/v as one matmul
whose q and k rows are reordered per head so that RoPE is one complex multiplication. CUDA, torch.compile
and autocast run the plain PyTorch ops; the parameters are the same either way. The kernels live in
trainer/cpu_ops.py.

Options from the modded-nanogpt speedrun (docs/trainer.md, each off by default): ``qk_norm`` (RMSNorm of
queries and keys per head, Qwen3's layout), ``mlp: relu2``, ``logit_softcap`` and ``document_mask``
(attention stays within each eos-closed document of a packed row).

``GPT(idx)`` returns next-token logits; :func:`lm_loss` turns them into the training loss.
``GPTClassifier`` is the same network with a linear head on the hidden state at given positions
(sequence classification); :func:`build_model` picks the class a checkpoint's dimensions call for.

With ``objective == "mlm"`` the attention is bidirectional (no causal mask; a boolean ``mask`` keeps
packed documents apart, :func:`document_mask`) and ``GPT(idx, mask, select)`` returns the logits of the
original tokens at the ``select``ed (masked) positions only. The layout is then EuroBERT's (Llama's
blocks without the causal mask), which is what export writes (``EuroBertForMaskedLM``);
``EncoderClassifier`` is EuroBERT's sequence-classification head (first or mean pooling, dense, GELU,
linear).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gristmill.trainer import cpu_ops

# name → (n_layer, n_head, d_model, max_seq_len). "124M"/"350M" are GPT-2 small/medium shapes
# (with a 32k vocabulary and tied embeddings the parameter counts are ~110M and ~340M).
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 4, 64, 256),
    "small": (4, 4, 192, 256),
    "124M": (12, 12, 768, 1024),
    "350M": (24, 16, 1024, 1024),
}


@dataclass(frozen=True)
class ModelArgs:
    """Every dimension resolved: what a checkpoint stores as model_config.json."""

    vocab_size: int  # the tokenizer's
    padded_vocab_size: int  # rows of the embedding table
    n_layer: int
    n_head: int
    n_kv_head: int
    d_model: int
    ffn_hidden: int
    max_seq_len: int
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    #: > 0: a sequence-classification head (GPTClassifier, or EncoderClassifier for an MLM encoder)
    n_classes: int = 0
    #: clm: causal (GPT); mlm: bidirectional encoder trained by masked language modelling
    objective: str = "clm"
    #: MLM: the tokenizer's <mask> id, and the share of tokens whose originals are predicted
    mask_id: int = -1
    mask_rate: float = 0.15
    #: the classifier's pooling: last (causal), first or mean (MLM encoder)
    pooling: str = "last"
    #: RMSNorm of each head's queries and keys before RoPE (Qwen3, OLMo 2, the modded-nanogpt speedrun)
    qk_norm: bool = False
    #: swiglu: silu(gate) · up (Llama); relu2: relu(up)² with two matrices (Primer, the speedrun)
    mlp: str = "swiglu"
    #: > 0: logits = cap · tanh(logits / cap) (Gemma 2, the speedrun)
    logit_softcap: float = 0.0
    #: causal attention within each eos-closed document of a packed row (training; generation sees one prompt)
    document_mask: bool = False
    #: the tokenizer's eos id (document_mask)
    eos_id: int = -1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def resolve_model_args(cfg, vocab_size: int, seq_len: int | None = None) -> ModelArgs:
    """ModelConfig (preset + overrides) + the tokenizer's vocabulary → concrete dimensions."""
    n_layer, n_head, d_model, max_len = PRESETS[cfg.preset] if cfg.preset else (None, None, None, None)
    n_layer = cfg.n_layer or n_layer
    n_head = cfg.n_head or n_head
    d_model = cfg.d_model or d_model
    if None in (n_layer, n_head, d_model):
        raise ValueError("model: set a preset or all of n_layer, n_head and d_model")
    if d_model % n_head:
        raise ValueError(f"model: d_model {d_model} is not a multiple of n_head {n_head}")
    if (d_model // n_head) % 2:
        raise ValueError(f"model: head dimension {d_model // n_head} must be even (RoPE rotates pairs)")
    n_kv = cfg.n_kv_head or n_head
    if n_head % n_kv:
        raise ValueError(f"model: n_head {n_head} is not a multiple of n_kv_head {n_kv}")
    # relu² has two matrices where SwiGLU has three: 4·d_model wide for the same parameters
    ffn = cfg.ffn_hidden or (4 * d_model if cfg.mlp == "relu2" else 64 * math.ceil(8 * d_model / 3 / 64))
    max_seq_len = cfg.max_seq_len or seq_len or max_len
    if seq_len is not None and max_seq_len < seq_len:
        raise ValueError(f"model.max_seq_len {max_seq_len} is shorter than the token shards' seq_len {seq_len}")
    m = cfg.vocab_multiple
    return ModelArgs(
        vocab_size=vocab_size, padded_vocab_size=m * math.ceil(vocab_size / m), n_layer=n_layer, n_head=n_head,
        n_kv_head=n_kv, d_model=d_model, ffn_hidden=ffn, max_seq_len=max_seq_len, rope_theta=cfg.rope_theta,
        norm_eps=cfg.norm_eps, tie_embeddings=cfg.tie_embeddings, dropout=cfg.dropout,
        objective=cfg.objective, mask_rate=cfg.mask_rate, qk_norm=cfg.qk_norm, mlp=cfg.mlp,
        logit_softcap=cfg.logit_softcap or 0.0, document_mask=cfg.document_mask,
    )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_ops.eager_cpu(x, self.weight):
            return cpu_ops.RMSNormCPU.apply(x, self.weight, self.eps)
        # in fp32 whatever the autocast dtype, as Llama does
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # rotate-half layout (HF Llama)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).type_as(x)


def _pair_order(gain: torch.Tensor) -> torch.Tensor:
    """A per-head gain (D,) in :func:`~gristmill.trainer.cpu_ops.interleave_pairs` order."""
    return cpu_ops.interleave_pairs(gain[:, None], 1)[:, 0]


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.n_head, self.n_kv, self.hd = a.n_head, a.n_kv_head, a.head_dim
        self.q_proj = nn.Linear(a.d_model, a.n_head * self.hd, bias=False)
        self.k_proj = nn.Linear(a.d_model, a.n_kv_head * self.hd, bias=False)
        self.v_proj = nn.Linear(a.d_model, a.n_kv_head * self.hd, bias=False)
        self.o_proj = nn.Linear(a.n_head * self.hd, a.d_model, bias=False)
        self.dropout = a.dropout
        self.causal = a.objective != "mlm"
        if a.qk_norm:
            self.q_norm = RMSNorm(self.hd, a.norm_eps)
            self.k_norm = RMSNorm(self.hd, a.norm_eps)

    def _qkv_pairs(self, x, cos, sin):
        """q, k, v (B, H, T, D) for eager CPU work: one matmul with the three projections stacked (as
        nanoGPT's c_attn), the q and k rows in :func:`interleave_pairs` order so that :func:`rope_pairs`
        rotates them with one complex multiplication instead of rotate-half's copies (~4× faster forward +
        backward on CPU). q and k come out with their head dimensions in the same other order, so q · k and
        the attention output are unchanged (the dot products summed in another order)."""
        B, T, _ = x.shape
        w = torch.cat((cpu_ops.interleave_pairs(self.q_proj.weight, self.n_head),
                       cpu_ops.interleave_pairs(self.k_proj.weight, self.n_kv), self.v_proj.weight))
        q, k, v = F.linear(x, w).split((self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd), dim=-1)
        q, k = q.view(B, T, self.n_head, self.hd), k.view(B, T, self.n_kv, self.hd)
        if hasattr(self, "q_norm"):  # the norms' gains in the same pair order as the heads' dimensions
            q = cpu_ops.RMSNormCPU.apply(q, _pair_order(self.q_norm.weight), self.q_norm.eps)
            k = cpu_ops.RMSNormCPU.apply(k, _pair_order(self.k_norm.weight), self.k_norm.eps)
        q, k = cpu_ops.rope_pairs(q, cos, sin), cpu_ops.rope_pairs(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, self.n_kv, self.hd).transpose(1, 2)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None):
        B, T, _ = x.shape
        if cache is None and cpu_ops.eager_cpu(x, self.q_proj.weight):
            q, k, v = self._qkv_pairs(x, cos, sin)
        else:
            q = self.q_proj(x).view(B, T, self.n_head, self.hd)
            k = self.k_proj(x).view(B, T, self.n_kv, self.hd)
            v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
            if hasattr(self, "q_norm"):
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if mask is not None:  # an encoder's documents or padding, or a causal model's documents (causal within)
            if self.n_kv != self.n_head:
                # grouped-query heads repeated: the CUDA kernels that take a mask do not all take enable_gqa
                k, v = (t.repeat_interleave(self.n_head // self.n_kv, dim=1) for t in (k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        elif not self.causal:  # an encoder: every token sees every other one
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_kv != self.n_head)
        # with a cache and several new tokens, queries sit at the end: causal mask offset by the cached length
        elif cache is None or T == k.shape[2]:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv != self.n_head,
            )
        else:
            past = k.shape[2] - T
            mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        if a.mlp not in ("swiglu", "relu2"):
            raise ValueError(f"model.mlp is swiglu or relu2, not {a.mlp!r}")
        if a.mlp == "swiglu":
            self.gate_proj = nn.Linear(a.d_model, a.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(a.d_model, a.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(a.ffn_hidden, a.d_model, bias=False)

    def forward(self, x):
        if not hasattr(self, "gate_proj"):  # relu²
            return self.down_proj(F.relu(self.up_proj(x)).square())
        if cpu_ops.eager_cpu(x, self.gate_proj.weight):
            return self.down_proj(cpu_ops.SwiGLUCPU.apply(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attn_norm = RMSNorm(a.d_model, a.norm_eps)
        self.attn = Attention(a)
        self.mlp_norm = RMSNorm(a.d_model, a.norm_eps)
        self.mlp = MLP(a)
        self.drop = nn.Dropout(a.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0, mask=None):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer, mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class KVCache:
    """Keys and values of the tokens seen so far, per layer, preallocated to ``max_len``."""

    def __init__(self, args: ModelArgs, batch: int, max_len: int, device, dtype):
        shape = (args.n_layer, batch, args.n_kv_head, max_len, args.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # tokens cached (advanced by GPT.forward after the last layer)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class GPT(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.padded_vocab_size, args.d_model)
        self.drop = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.d_model, args.norm_eps)
        self.lm_head = nn.Linear(args.d_model, args.padded_vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.add_heads(args)
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        # not saved in checkpoints: a function of the config
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def add_heads(self, args: ModelArgs) -> None:
        """Where a subclass adds its task heads: before the one initialisation of every parameter."""

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02); residual output projections scaled by 1/√(2·n_layer)."""
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith(".bias"):  # only the classification heads have biases
                nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.args.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) → the final normalised hidden states (B, T, d_model); with a cache, the new
        tokens' states after the cached ones. ``mask``: (B, 1, T, T) or (B, 1, 1, T), True where a query may
        attend to a key (an encoder's documents or padding; with ``document_mask`` a causal model builds its own)."""
        T = idx.shape[1]
        if cache is not None and self.args.objective == "mlm":
            raise ValueError("an MLM encoder does not generate (no KV cache): generate from a causal (clm) checkpoint")
        start = cache.length if cache is not None else 0
        if start + T > self.args.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {self.args.max_seq_len}")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        if self.args.document_mask and mask is None and cache is None and self.args.objective == "clm":
            mask = causal_document_mask(idx, self.args.eos_id)
        x = self.drop(self.embed(idx))
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, mask)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) → logits (B, T, padded_vocab): of the next token (causal), of the token itself (MLM).
        With ``select`` (B, T) bool, only the selected positions' logits (N, padded_vocab): MLM's loss needs
        the masked ~15 %, and the output projection is the largest matmul of a small model."""
        h = self.hidden(idx, cache, mask)
        logits = self.lm_head(h if select is None else h[select])
        if self.args.logit_softcap:
            cap = self.args.logit_softcap
            logits = (cpu_ops.SoftcapCPU.apply(logits, cap) if cpu_ops.eager_cpu(logits)
                      else torch.tanh(logits / cap) * cap)
        return logits

    def num_params(self, embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        return n if embedding else n - self.embed.weight.numel()


class GPTClassifier(GPT):
    """The transformer with a linear classification head on the hidden state at one position per
    sequence (the last real token: fine-tuning pads on the right). Its own forward, so DDP's and
    FSDP's forward hooks run as for the language model; the weights keep the GPT's names plus
    ``cls_head.*``, so a pretraining checkpoint loads into it."""

    def add_heads(self, args: ModelArgs) -> None:
        if args.n_classes < 2:
            raise ValueError(f"a classifier needs n_classes >= 2, not {args.n_classes}")
        self.cls_head = nn.Linear(args.d_model, args.n_classes)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """idx (B, T), positions (B,) → class logits (B, n_classes)."""
        h = self.hidden(idx)[torch.arange(idx.shape[0], device=idx.device), positions]
        return self.cls_head(h)


class EncoderClassifier(GPT):
    """An MLM encoder with EuroBERT's classification head: the hidden state of the first token (BERT's
    [CLS]; fine-tuning puts <s> there) or the mean over the text's tokens, then dense, GELU, linear. Pad
    tokens are masked out of attention (keys after ``positions``), as transformers does with an
    attention mask, so the logits equal ``EuroBertForSequenceClassification``'s."""

    def add_heads(self, args: ModelArgs) -> None:
        if args.n_classes < 2:
            raise ValueError(f"a classifier needs n_classes >= 2, not {args.n_classes}")
        if args.pooling not in ("first", "mean"):
            raise ValueError(f"an MLM encoder pools the first token or the mean, not {args.pooling!r}")
        self.cls_dense = nn.Linear(args.d_model, args.d_model)
        self.cls_head = nn.Linear(args.d_model, args.n_classes)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """idx (B, T), positions (B,) = each row's last real token → class logits (B, n_classes)."""
        real = torch.arange(idx.shape[1], device=idx.device)[None, :] <= positions[:, None]  # (B, T)
        h = self.hidden(idx, mask=real[:, None, None, :])
        if self.args.pooling == "first":
            pooled = h[:, 0]
        else:
            w = real.unsqueeze(-1).to(h.dtype)
            pooled = (h * w).sum(1) / w.sum(1)
        return self.cls_head(F.gelu(self.cls_dense(pooled)))


#: torch's global RNG draws a new model's weights. Whoever seeds it or sets its state holds this lock (a
#: run seeding and building its model, a resume restoring it), and so does every build: runs in threads of
#: one process (``ablate.runs_per_process``) then get the weights each gets alone
RNG_LOCK = threading.RLock()


def build_model(args: ModelArgs) -> GPT:
    """The model a checkpoint's dimensions describe: a classifier when it has classes."""
    with RNG_LOCK:
        if args.n_classes:
            return EncoderClassifier(args) if args.objective == "mlm" else GPTClassifier(args)
        return GPT(args)


def document_mask(idx: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) ids of rows packed from documents joined by eos → (B, 1, T, T) bool, True where query and
    key are in the same document (each eos closes its document), so that an encoder's attention does
    not cross document boundaries. (B·T² booleans: small next to the attention it masks.)"""
    eos = (idx == eos_id).long()
    doc = eos.cumsum(1) - eos  # document number of every token, its closing eos included
    return (doc[:, :, None] == doc[:, None, :]).unsqueeze(1)


def causal_document_mask(idx: torch.Tensor, eos_id: int) -> torch.Tensor:
    """:func:`document_mask` within the causal mask: a token sees the earlier tokens of its own document."""
    if eos_id < 0:
        raise ValueError("model.document_mask needs the tokenizer's eos id (ModelArgs.eos_id)")
    T = idx.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
    return document_mask(idx, eos_id) & causal


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy (in fp32) over the targets that are not ``ignore_index``."""
    logits, targets = logits.float().view(-1, logits.size(-1)), targets.reshape(-1)
    if cpu_ops.eager_cpu(logits):
        return cpu_ops.CrossEntropyCPU.apply(logits, targets, ignore_index, True)
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) as in the PaLM paper's MFU:
    6 × (matmul parameters) + 12 × n_layer × d_model × seq_len for attention scores and values.
    The embedding lookup is not a matmul; the output projection (tied or not) is, for every token of a
    causal model and for the masked ones (mask_rate) of an MLM encoder."""
    a = args
    attn_params = a.d_model * a.head_dim * (2 * a.n_head + 2 * a.n_kv_head)
    mlp_params = (2 if a.mlp == "relu2" else 3) * a.d_model * a.ffn_hidden
    head = a.d_model * a.padded_vocab_size * (a.mask_rate if a.objective == "mlm" else 1.0)
    matmul_params = a.n_layer * (attn_params + mlp_params) + head
    return 6.0 * matmul_params + 12.0 * a.n_layer * a.d_model * seq_len
