"""A checkpoint → a Hugging Face directory: ``LlamaForCausalLM`` config + safetensors, and the tokenizer.

The model already has Llama's layout (trainer/model.py), so export renames tensors; nothing is
converted or permuted (both use rotate-half RoPE). ``vocab_size`` is the padded embedding size: the
extra rows are never produced by the tokenizer.

An MLM encoder (``model.objective: mlm``) has EuroBERT's layout, which is Llama's without the causal
mask, under the same tensor names: it exports as ``EuroBertForMaskedLM`` (``AutoModelForMaskedLM``, the
``fill-mask`` pipeline), its classification fine-tunes as ``EuroBertForSequenceClassification``
(``classifier_pooling`` bos or mean; ``cls_dense``/``cls_head`` → ``dense``/``classifier``). transformers
attends across the whole input (with an attention mask: across its real tokens), as the encoder does
within one document; several eos-joined documents in one input would see each other there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save

from gristmill.errors import GristmillError
from gristmill.tokenizer.hf import CHATML_TEMPLATE
from gristmill.trainer import checkpoint as ckpt
from gristmill.trainer.finetune_data import IM_END

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def hf_name(name: str) -> str:
    """gristmill parameter name → LlamaForCausalLM (and EuroBERT) parameter name."""
    if name.startswith(("cls_dense.", "cls_head.")):  # EuroBertForSequenceClassification's head
        return name.replace("cls_dense.", "dense.").replace("cls_head.", "classifier.")
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


def _dimensions(args) -> dict:
    """The transformer's shape in the names Llama and EuroBERT configs share."""
    return {
        "vocab_size": args.padded_vocab_size,
        "hidden_size": args.d_model,
        "intermediate_size": args.ffn_hidden,
        "num_hidden_layers": args.n_layer,
        "num_attention_heads": args.n_head,
        "num_key_value_heads": args.n_kv_head,
        "head_dim": args.head_dim,
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
    }


def unexportable(args) -> list[str]:
    """The model options transformers has no architecture for, with what to do instead (empty: exportable)."""
    out = []
    if args.mlp != "swiglu":
        out.append(f"model.mlp: {args.mlp} (Llama and Qwen3 have SwiGLU MLPs)")
    if args.logit_softcap:
        out.append(f"model.logit_softcap: {args.logit_softcap} (only Gemma 2 caps logits, with a layout of its own)")
    return out


def llama_config(args, special: dict) -> dict:
    """LlamaForCausalLM; with ``qk_norm``, Qwen3ForCausalLM: Llama's layout with an RMSNorm over each head's
    queries and keys before RoPE (``self_attn.q_norm`` / ``k_norm``), which is gristmill's qk_norm."""
    qwen3 = getattr(args, "qk_norm", False)
    return {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        **_dimensions(args),
        "rope_theta": args.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": args.tie_embeddings,
        "torch_dtype": "float32",
        **({"rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta}, "use_sliding_window": False}
           if qwen3 else {}),
        **special,
    }


def eurobert_config(args, special: dict, mask_id: int, classes: list[str] | None) -> dict:
    """An MLM encoder's config: EuroBertForMaskedLM, or with ``classes`` EuroBertForSequenceClassification."""
    cfg = {
        "architectures": ["EuroBertForSequenceClassification" if classes else "EuroBertForMaskedLM"],
        "model_type": "eurobert",
        **_dimensions(args),
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        # a classifier has no output matrix to tie
        "tie_word_embeddings": args.tie_embeddings and not classes,
        "mask_token_id": mask_id,
        "torch_dtype": "float32",
        **special,
    }
    if classes:
        cfg.update(classifier_pooling={"first": "bos", "mean": "mean"}[args.pooling], num_labels=len(classes),
                   id2label={str(i): c for i, c in enumerate(classes)}, label2id={c: i for i, c in enumerate(classes)})
    return cfg


def _classifier_post_processor(tokenizer_json: bytes, args, special: dict) -> bytes:
    """tokenizer.json that frames a text as classification fine-tuning did (finetune_data.cls_examples): <s> first
    with first-token pooling, </s> last; the text-classification pipeline then gives the fine-tuned inputs."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(tokenizer_json.decode())
    bos, eos = tok.id_to_token(special["bos_token_id"]), tok.id_to_token(special["eos_token_id"])
    first = f"{bos} " if args.pooling == "first" else ""
    tok.post_processor = processors.TemplateProcessing(
        single=f"{first}$A {eos}", pair=f"{first}$A {eos} $B {eos}",
        special_tokens=[(t, tok.token_to_id(t)) for t in dict.fromkeys([*([bos] if first else []), eos])])
    return tok.to_str(pretty=False).encode()


class ExportError(GristmillError):
    """An export that would harm files it did not write; the message says what to do."""


#: what an export directory holds besides the files it lists (written last: a complete export)
EXPORT_MARKER = ".gristmill-export.json"


def _encoder_card(checkpoint: Path, args, state: dict, n_params: int) -> str:
    classes = state.get("classes") if args.n_classes else None
    auto = "AutoModelForSequenceClassification" if classes else "AutoModelForMaskedLM"
    usage = (["from transformers import pipeline", "clf = pipeline('text-classification', model=PATH)",
              "print(clf('Der Hund schläft.'))"] if classes else
             ["from transformers import pipeline", "fill = pipeline('fill-mask', model=PATH)",
              "print(fill('The mill grinds <mask>.'))"])
    return "\n".join([
        "---", "library_name: transformers", f"pipeline_tag: {'text-classification' if classes else 'fill-mask'}",
        "tags: [gristmill, eurobert, masked-lm]", "---", "",
        f"# {checkpoint.parent.name} (step {state.get('step')})", "",
        "A bidirectional encoder pretrained with gristmill by masked language modelling (BERT's 80/10/10 masking "
        f"of {args.mask_rate:.0%} of the tokens), EuroBERT layout (RoPE, RMSNorm, SwiGLU); exported from a native "
        f"checkpoint, the logits equal the native model's. Load it with `{auto}`.", "",
        f"parameters {n_params:,}: {args.n_layer} layers × {args.d_model} wide; context {args.max_seq_len} tokens; "
        f"{state.get('task', 'pretrain')}, {state.get('step')} steps"
        + (f"; classes {', '.join(classes)} ({args.pooling} pooling)" if classes else "") + ".", "",
        "```python", *usage, "```", ""])


def _model_card(checkpoint: Path, args, state: dict, run: dict, special: dict, n_params: int) -> str:
    task = state.get("task", "pretrain")
    section = {"pretrain": "pretrain", "sft": "sft", "cls": "finetune_cls"}.get(task, task)
    cfg = run.get(section, {})
    # names, not this machine's absolute paths: the card travels with the model
    data = ", ".join(Path(str(d)).name for d in ([cfg["data"]] if cfg.get("data") else cfg.get("files") or [])) or "?"
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation",
        f"tags: [gristmill, {'qwen3' if args.qk_norm else 'llama'}]", "---", "",
        f"# {checkpoint.parent.name} (step {state.get('step')})", "",
        "A decoder-only transformer trained with gristmill — "
        + ("Qwen3 layout (RoPE, RMSNorm, SwiGLU, RMSNorm of queries and keys)" if args.qk_norm else
           "Llama layout (RoPE, RMSNorm, SwiGLU)")
        + ", exported from a native checkpoint; the logits equal the native model's"
        + (" on any one document (it was trained with attention kept within each document of a packed row)."
           if args.document_mask else "."), "",
        "| | |", "|---|---|",
        f"| parameters | {n_params:,}: {args.n_layer} layers × {args.d_model} wide ({args.n_head} heads, "
        f"{args.n_kv_head} KV heads), embeddings {'tied' if args.tie_embeddings else 'untied'} |",
        f"| context | {args.max_seq_len} tokens |",
        f"| vocabulary | {args.vocab_size:,} SentencePiece pieces (table padded to {args.padded_vocab_size:,}) |",
        f"| training | {task}, {state.get('step')} steps, {state.get('tokens_seen', 0):,} tokens, "
        f"batch {state.get('batch_size')} |",
        f"| data | {data} |",
    ]
    if state.get("init_checkpoint"):
        init = Path(str(state["init_checkpoint"]))
        lines.append(f"| started from | {init.parent.name}/{init.name} |")
    metrics = {k: v for k, v in (state.get("metrics") or {}).items() if isinstance(v, (int, float)) and k != "step"}
    if metrics:
        lines.append("| last metrics | " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())) + " |")
    lines += ["", "Chat: the tokenizer's template is ChatML (`<|im_start|>role\\n…<|im_end|>`); generation stops at "
              f"`<|im_end|>` or `</s>` (generation_config.json: eos {special.get('eos_token_id')}).", "",
              "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(PATH)", "model = AutoModelForCausalLM.from_pretrained(PATH)",
              "inputs = tok.apply_chat_template([{'role': 'user', 'content': 'Hi'}], add_generation_prompt=True, "
              "return_tensors='pt', return_dict=True)",
              "out = model.generate(**inputs, max_new_tokens=50)",
              "print(tok.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))", "```", ""]
    return "\n".join(lines)


def _check_output(output: Path, overwrite: bool) -> list[str]:
    """The files an earlier export wrote here (replaceable); refuse a directory holding anything else."""
    if not output.exists():
        return []
    if not output.is_dir():
        raise ExportError(f"{output} is a file: give a directory to export to")
    marker = output / EXPORT_MARKER
    ours = json.loads(marker.read_text())["files"] if marker.is_file() else []
    foreign = sorted(p.name for p in output.iterdir() if p.name not in (*ours, EXPORT_MARKER))
    if foreign and not overwrite:
        raise ExportError(f"{output} holds files export-hf did not write ({', '.join(foreign[:5])}"
                          f"{' …' if len(foreign) > 5 else ''}): choose a new directory, or pass --overwrite to write "
                          "the export next to them (they are never deleted)")
    return ours


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)  # readable by the serving user, whatever the umask of the training job
    os.replace(tmp, path)


def export_hf(checkpoint: str | Path, output: str | Path, tokenizer: str | Path | None = None,
              overwrite: bool = False) -> Path:
    """Write ``output``: config.json (LlamaForCausalLM), model.safetensors, generation_config.json (stops
    at eos and <|im_end|>), the tokenizer (left padding, model_max_length = the model's context, the
    ChatML template with generation markers) and a model card. Never deletes a file it did not
    write: a directory with other files is refused unless ``overwrite``, and then left beside them."""
    checkpoint, output = ckpt.resolve_checkpoint(checkpoint), Path(output)
    previous = _check_output(output, overwrite)
    args = ckpt.load_model_args(checkpoint)
    state = ckpt.read_state(checkpoint)
    run_path = checkpoint / ckpt.RUN_CONFIG
    if not run_path.is_file():
        run_path = checkpoint / "config.json"  # checkpoints written before run_config.json
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    refused = unexportable(args)
    if refused:
        raise ExportError(f"{checkpoint} was trained with {'; '.join(refused)}: transformers has no architecture "
                          "that gives its logits, so it is not exported. Use it with gristmill (generate, evaluate), "
                          "or train without the option to export")
    weights = ckpt.load_weights(checkpoint, args)
    encoder = args.objective == "mlm"
    classes = state.get("classes") if encoder and args.n_classes else None

    def kept(k: str) -> bool:
        if k == "lm_head.weight":  # tied: stored once; a sequence classifier has no output matrix
            return not (args.tie_embeddings or classes)
        # the language model only: a causal classifier's head has no place in LlamaForCausalLM
        return classes is not None or not k.startswith(("cls_head.", "cls_dense."))

    tensors = {hf_name(k): v.contiguous() for k, v in weights.items() if kept(k)}
    tok_dir = Path(tokenizer) if tokenizer else checkpoint
    if not (tok_dir / "tokenizer.json").is_file():
        raise ExportError(f"{tok_dir / 'tokenizer.json'} not found: pass --tokenizer DIR "
                          "(written by `gristmill tokenizer train`)")
    special, im_end = {}, None
    meta_path = tok_dir / "tokenizer_meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        toks = meta.get("special_tokens", {})
        special = {f"{k}_token_id": toks[k]["id"] for k in ("bos", "eos", "pad") if k in toks and toks[k]["id"] >= 0}
        im_end = meta.get("user_defined_symbols", {}).get(IM_END)
    generation = dict(special)
    if im_end is not None and "eos_token_id" in special:  # a chat answer ends at <|im_end|>
        generation["eos_token_id"] = [special["eos_token_id"], im_end]

    n_params = sum(t.numel() for t in tensors.values())
    if encoder:
        files: dict[str, bytes] = {
            "model.safetensors": save(tensors, metadata={"format": "pt"}),
            "config.json": json.dumps(eurobert_config(args, special, args.mask_id, classes), indent=1).encode(),
            "README.md": _encoder_card(checkpoint, args, state, n_params).encode(),
        }
    else:
        files = {
            "model.safetensors": save(tensors, metadata={"format": "pt"}),
            "config.json": json.dumps(llama_config(args, special), indent=1).encode(),
            "generation_config.json": json.dumps(generation, indent=1).encode(),
            "README.md": _model_card(checkpoint, args, state, run, generation, n_params).encode(),
        }
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            files[name] = (tok_dir / name).read_bytes()
    if classes and {"bos_token_id", "eos_token_id"} <= special.keys():
        files["tokenizer.json"] = _classifier_post_processor(files["tokenizer.json"], args, special)
    if "tokenizer_config.json" in files and encoder:
        # an encoder reads the whole input at once: pad on the right (first-token pooling reads position 0)
        tok_cfg = json.loads(files["tokenizer_config.json"])
        tok_cfg.pop("chat_template", None)
        tok_cfg.update(model_max_length=args.max_seq_len, padding_side="right")
        files["tokenizer_config.json"] = json.dumps(tok_cfg, indent=2).encode()
    elif "tokenizer_config.json" in files:
        tok_cfg = json.loads(files["tokenizer_config.json"])
        tok_cfg.update(chat_template=CHATML_TEMPLATE, model_max_length=args.max_seq_len, padding_side="left")
        files["tokenizer_config.json"] = json.dumps(tok_cfg, indent=2).encode()
    output.mkdir(parents=True, exist_ok=True)
    (output / EXPORT_MARKER).unlink(missing_ok=True)  # incomplete until every file is in place
    for name, data in files.items():
        _write(output / name, data)
    for name in set(previous) - set(files):  # what an earlier export wrote and this one does not
        (output / name).unlink(missing_ok=True)
    _write(output / EXPORT_MARKER, json.dumps({"checkpoint": str(checkpoint), "files": sorted(files)}).encode())
    return output
