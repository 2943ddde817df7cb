"""A checkpoint → a Hugging Face directory: ``LlamaForCausalLM`` config + safetensors, and the tokenizer.

The model already has Llama's layout (trainer/model.py), so export renames tensors; nothing is
converted or permuted (both use rotate-half RoPE). ``vocab_size`` is the padded embedding size: the
extra rows are never produced by the tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from gristmill.trainer import checkpoint as ckpt

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def hf_name(name: str) -> str:
    """gristmill parameter name → LlamaForCausalLM parameter name."""
    if name == "embed.weight":
        return "model.embed_tokens.weight"
    if name == "norm.weight":
        return "model.norm.weight"
    if name == "lm_head.weight":
        return name
    parts = name.split(".")  # layers.{i}.{attn_norm|attn|mlp_norm|mlp}...
    i, rest = parts[1], parts[2:]
    head = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "attn": "self_attn",
            "mlp": "mlp"}[rest[0]]
    return ".".join(["model", "layers", i, head, *rest[1:]])


def llama_config(args, special: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.padded_vocab_size,
        "hidden_size": args.d_model,
        "intermediate_size": args.ffn_hidden,
        "num_hidden_layers": args.n_layer,
        "num_attention_heads": args.n_head,
        "num_key_value_heads": args.n_kv_head,
        "head_dim": args.head_dim,
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": args.tie_embeddings,
        "torch_dtype": "float32",
        **special,
    }


def export_hf(checkpoint: str | Path, output: str | Path, tokenizer: str | Path | None = None) -> Path:
    checkpoint, output = Path(checkpoint), Path(output)
    if not ckpt.is_complete(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: not a complete gristmill checkpoint (no {ckpt.STATE_FILE})")
    args = ckpt.load_model_args(checkpoint)
    weights = ckpt.load_weights(checkpoint, args)
    # the language model only: a classification head has no place in LlamaForCausalLM
    tensors = {hf_name(k): v.contiguous() for k, v in weights.items()
               if not (args.tie_embeddings and k == "lm_head.weight") and not k.startswith("cls_head.")}
    tok_dir = Path(tokenizer) if tokenizer else checkpoint
    if not (tok_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tok_dir / 'tokenizer.json'} not found: pass --tokenizer DIR "
                                "(written by `gristmill tokenizer train`)")
    special = {}
    meta_path = tok_dir / "tokenizer_meta.json"
    if meta_path.is_file():
        toks = json.loads(meta_path.read_text()).get("special_tokens", {})
        special = {f"{k}_token_id": toks[k]["id"] for k in ("bos", "eos", "pad") if k in toks and toks[k]["id"] >= 0}
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(llama_config(args, special), indent=1))
    gen = {k: v for k, v in special.items()}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=1))
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, tmp / name)
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    return output
