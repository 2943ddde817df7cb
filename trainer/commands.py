"""The trainer's subcommands of ``gristmill``: sft, finetune-cls, eval, generate, export-hf.
(``gristmill pretrain`` lives in trainer/pretrain.py, which is also ``python -m trainer.pretrain``.)"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _config_args(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", metavar="FILE", help=f"YAML config ({example})")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override one config key (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def add_parsers(sub, common) -> None:
    s = sub.add_parser(
        "sft", help="instruction / chat fine-tuning from a pretraining checkpoint (Ray Train)",
        description="Fine-tune a checkpoint (sft.init_checkpoint) on chat JSONL ({messages: [{role, content}]}), "
        "instruction JSONL/JSON ({instruction, input?, output|response}), question/answer JSONL (GSM8K) or OpenAssistant "
        "trees (sft.files), rendered with the ChatML template of the tokenizer; the loss is on assistant tokens only. "
        "Same loop, checkpoints and resume as `gristmill pretrain` (the sft: section holds its settings). Writes "
        "STORAGE_PATH/NAME/checkpoint_NNNNNNNN.",
        epilog="example: gristmill sft --config configs/demo.yaml --set sft.max_steps=200")
    _config_args(s, "configs/demo.yaml has an sft: section")
    common(s)
    c = sub.add_parser(
        "finetune-cls", help="sequence classification fine-tuning (last-token pooling) with accuracy and macro-F1",
        description="Add a linear classification head on the last token's hidden state of a checkpoint "
        "(finetune_cls.init_checkpoint) and fine-tune on labelled JSONL/TSV (finetune_cls.files, text_field, "
        "label_field); reports validation accuracy and macro-F1.",
        epilog="example: gristmill finetune-cls --config configs/cls-lid.yaml")
    _config_args(c, "configs/cls-lid.yaml")
    common(c)
    e = sub.add_parser(
        "eval", help="perplexity on validation token shards; k-shot multiple choice by log-likelihood; JSON report",
        description="Evaluate a checkpoint: perplexity on the val/ split of a token directory (--data) and accuracy "
        "on multiple-choice JSONL files ({question, choices, answer}; --mc), k-shot (--shots). Writes a JSON report.",
        epilog="example: gristmill eval --checkpoint runs/demo/pretrain/demo/checkpoint_00000150 --data runs/demo/tokens "
        "--mc sample/eval/genesis_next_sentence_mc.jsonl --shots 3 --output eval.json")
    e.add_argument("--checkpoint", required=True, metavar="DIR")
    e.add_argument("--data", metavar="DIR", help="token directory (its val/ split) for perplexity")
    e.add_argument("--max-batches", type=int, default=0, metavar="N", help="perplexity on at most N batches of 8 (0: all)")
    e.add_argument("--mc", nargs="*", default=[], metavar="JSONL", help="multiple-choice files")
    e.add_argument("--shots", type=int, default=0, metavar="K", help="examples from the same file put before each question")
    e.add_argument("--limit", type=int, default=0, metavar="N", help="score only the first N items of each file")
    e.add_argument("--output", metavar="FILE", help="JSON report (default: CHECKPOINT/eval.json)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda")
    common(e)
    g = sub.add_parser(
        "generate", help="generate text from a checkpoint (sampling, stop sequences, KV cache, streaming, chat)",
        description="Complete a prompt (argument or standard input), streaming to stdout. --chat wraps the prompt in the "
        "tokenizer's ChatML template as a user message and stops at <|im_end|>.",
        epilog="example: gristmill generate --checkpoint runs/demo/sft/demo/checkpoint_00000040 --chat 'What is a mill?'")
    g.add_argument("--checkpoint", required=True, metavar="DIR")
    g.add_argument("prompt", nargs="*", help="the prompt (default: read standard input)")
    g.add_argument("--chat", action="store_true", help="treat the prompt as a user message of a chat")
    g.add_argument("--system", metavar="TEXT", help="a system message (with --chat)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=50, help="0 = off")
    g.add_argument("--top-p", type=float, default=0.95, help="1 = off")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every token (slower; for checks)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    common(g)
    x = sub.add_parser(
        "export-hf", help="a checkpoint → a Hugging Face transformers directory (LlamaForCausalLM + tokenizer)",
        description="Write OUTPUT with config.json (LlamaForCausalLM), model.safetensors, generation_config.json and the "
        "tokenizer (tokenizer.json, tokenizer_config.json with the chat template), loadable with AutoModelForCausalLM "
        "and AutoTokenizer.")
    x.add_argument("--checkpoint", required=True, metavar="DIR")
    x.add_argument("--output", required=True, metavar="DIR")
    x.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory if the checkpoint carries none")
    common(x)


def _device(name: str):
    import torch

    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _train(task: str, args) -> int:
    """Run a training task (pretrain, sft, cls) from the command line and print where things are."""
    from pipelines.config import load_config
    from trainer.loop import run_training

    cfg = load_config(args.config, args.set)
    progress = sys.stderr.isatty() and not args.no_progress and not getattr(args, "quiet", False)
    result = run_training(cfg, task, progress=progress)
    m = result.metrics
    loss = f", loss {m['loss']:.4f}" if "loss" in m else ""
    val = f", val loss {m['val_loss']:.4f}" if "val_loss" in m else ""
    ppl = f" (perplexity {m['val_ppl']:.2f})" if "val_ppl" in m else ""
    print(f"{task}: step {m.get('step', '?')}{loss}{val}{ppl} in {result.seconds:.0f} s")
    print(f"final:      {json.dumps(m)}")
    metrics_path = result.run_dir / "metrics.jsonl"
    curve = [json.loads(x) for x in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    curve = [r for r in curve if "loss" in r]
    if len(curve) >= 2:
        print(f"loss:       {curve[0]['loss']:.3f} at step {curve[0]['step']} → {curve[-1]['loss']:.3f} at step {curve[-1]['step']}")
    print(f"metrics:    {metrics_path} (TensorBoard: {result.run_dir / 'tensorboard'})")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def cmd_sft(args) -> int:
    return _train("sft", args)


def cmd_cls(args) -> int:
    return _train("cls", args)


def cmd_eval(args) -> int:
    from trainer.checkpoint import load_model
    from trainer.evaluate import multiple_choice, perplexity, read_mc
    from trainer.generate import load_tokenizer

    model = load_model(args.checkpoint, _device(args.device))
    report: dict = {"checkpoint": str(Path(args.checkpoint).resolve())}
    if args.data:
        report["perplexity"] = perplexity(model, args.data, max_batches=args.max_batches)
        r = report["perplexity"]
        print(f"perplexity: {r['perplexity']:.2f} (loss {r['loss']:.4f} over {r['tokens']:,} tokens of {args.data}/val)")
    if args.mc:
        sp = load_tokenizer(args.checkpoint)
        report["multiple_choice"] = {}
        for path in args.mc:
            items = read_mc(path)
            items = items[: args.limit] if args.limit else items
            r = multiple_choice(model, sp, items, shots=args.shots)
            report["multiple_choice"][Path(path).name] = r
            print(f"{Path(path).name}: accuracy {r['accuracy']:.3f}, normalised {r['accuracy_norm']:.3f} "
                  f"({r['items']} items, {r['shots']}-shot; chance {r['chance']:.3f})")
    if not args.data and not args.mc:
        print("gristmill eval: nothing to do: give --data and/or --mc", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else Path(args.checkpoint) / "eval.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"report: {out}")
    return 0


def cmd_generate(args) -> int:
    from trainer.checkpoint import load_model
    from trainer.finetune_data import encode_chat
    from trainer.generate import SamplingConfig, default_stop_ids, generate_text, load_tokenizer

    model = load_model(args.checkpoint, _device(args.device))
    sp = load_tokenizer(args.checkpoint)
    prompt = " ".join(args.prompt) if args.prompt else sys.stdin.read()
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                         top_p=args.top_p if args.top_p < 1 else None, stop=tuple(args.stop),
                         stop_ids=default_stop_ids(sp), use_cache=not args.no_cache, seed=args.seed)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": prompt}]
        ids = encode_chat(sp, messages, add_generation_prompt=True)[0]
    else:
        ids = sp.encode(prompt)
        print(prompt, end="", flush=True)
    generate_text(model, sp, ids, cfg, on_text=lambda t: print(t, end="", flush=True))
    print()
    return 0


def cmd_export(args) -> int:
    from trainer.export import export_hf

    out = export_hf(args.checkpoint, args.output, args.tokenizer)
    print(f"exported: {out} (LlamaForCausalLM + tokenizer; load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


COMMANDS = {"sft": cmd_sft, "finetune-cls": cmd_cls, "eval": cmd_eval, "generate": cmd_generate, "export-hf": cmd_export}
