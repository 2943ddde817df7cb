"""``gristmill``: the one command line. ``gristmill <command> --help`` explains each step.

A thin layer over :mod:`gristmill.api`: every command parses its arguments, calls API functions
and prints what they returned. This module imports no stage (gristmill.pipelines, .dedupe, .tokenizer,
.trainer; tests/test_cli_layer.py holds it to that): the API imports a stage when one of its functions
is called, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from pathlib import Path

from gristmill import __version__
from gristmill.config import add_config_arguments
from gristmill.errors import run_command
from gristmill.log import add_logging_arguments, setup_logging, verbosity
from gristmill.secrets import redact_argv

log = logging.getLogger("gristmill")

CHECKPOINT_HELP = "a checkpoint_NNNNNNNN directory of a training run"
#: the steps of `gristmill demo`, in order (--until STEP stops after one)
DEMO_STEPS = ("corpus", "tokenizer", "tokenize", "pretrain", "sft")
#: commands whose unknown arguments are Beam pipeline options
BEAM_COMMANDS = ("corpus", "refresh", "tokenize", "demo", "ablate", "verify")

PRETRAIN_DESCRIPTION = (
    "Pretrain the transformer (model: section) on token shards (pretrain.data, written by "
    "`gristmill tokenize`): a causal LM (model.objective: clm), or a bidirectional encoder by masked language "
    "modelling (model.objective: mlm: 15 % of the tokens chosen, 80 % <mask>, 10 % random, 10 % kept; masked "
    "on the fly, deterministic per data position; loss and accuracy on the masked tokens). With Ray Train: DDP or "
    "FSDP over pretrain.num_workers workers (0 = in this process), "
    "AdamW with warmup + cosine, gradient accumulation and clipping, validation loss and perplexity every "
    "pretrain.eval_every steps. Checkpoints (safetensors + optimizer/RNG/data position) go to "
    "STORAGE_PATH/NAME/checkpoint_NNNNNNNN; metrics to STORAGE_PATH/NAME/metrics.jsonl and tensorboard/. "
    "Running the same name and storage_path again resumes from the last checkpoint, and a failed worker group "
    "restarts from it (pretrain.max_failures). On a cluster: ray job submit --address http://HEAD:8265 "
    "--working-dir . -- python -m gristmill.trainer.job --config FILE"
)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default when it has one worth showing; keeps an example on one line."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        unset = d is None or d is False or d is argparse.SUPPRESS or d == []
        unset = unset or isinstance(action, argparse._CountAction)
        if not unset and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text

    def _fill_text(self, text, width, indent):
        parts = []
        for part in text.split("\n\n"):
            if part.startswith("example:"):  # a command to copy: never wrapped
                parts.append(indent + part)
            else:
                parts.append(super()._fill_text(part, width, indent))
        return "\n\n".join(parts)


#: command → the config sections it reads, and where they are documented key by key
CONFIG_SECTIONS = {
    "corpus": (("read", "langid", "clean", "exact_dedup", "near_dedup", "write"), "configs/corpus.yaml"),
    "refresh": (("read", "langid", "clean", "exact_dedup", "near_dedup", "write"), "configs/corpus.yaml"),
    "tokenizer train": (("tokenizer",), "configs/corpus.yaml"),
    "tokenize": (("tokenize",), "configs/corpus.yaml"),
    "pretrain": (("model", "pretrain"), None),
    "sft": (("model", "sft"), None),
    "finetune-cls": (("model", "finetune_cls"), None),
}


def _number(kind, low: float, high: float | None = None, low_open: bool = False):
    """An argparse type: ``kind`` (int or float) within [low, high] ((low, high] with ``low_open``), so that a
    value the sampler cannot mean (``--top-p 1.5``, ``--temperature -1``) is a usage error, not a silent one."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < low or (low_open and value == low) or (high is not None and value > high):
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high is not None else f"[{low:g}, ∞)"
            raise argparse.ArgumentTypeError(f"{text} is outside {bounds}")
        return value

    return parse


def _add_config_help(parsers: dict[str, argparse.ArgumentParser]) -> None:
    """Each command's --help ends with the config keys it reads (every key and its default: gristmill/config.py)."""
    for command, (sections, where) in CONFIG_SECTIONS.items():
        p = parsers[command]
        documented = (f"every key with its default and meaning: {where}" if where else
                      "every key with its default and meaning: gristmill/config.py; examples: configs/demo.yaml, "
                      "configs/pretrain-124M.yaml, configs/cls-lid.yaml")
        p.epilog = (p.epilog or "") + (
            f"\n\nconfig: reads the section{'s' if len(sections) > 1 else ''} {', '.join(s + ':' for s in sections)} "
            f"({documented}). Other sections in the same file are ignored.")


class _Parser(argparse.ArgumentParser):
    """Every gristmill parser: no abbreviations of options (``--over`` is not ``--overwrite``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _corpus_arguments(parser: argparse.ArgumentParser, output_help: str) -> None:
    """Arguments of the commands that run the corpus pipeline."""
    parser.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                        help="input files or globs (quote globs); local paths or gs://, s3:// ...")
    parser.add_argument("--output", required=True, metavar="DIR", help=output_help)
    add_config_arguments(parser)
    parser.add_argument("--skip-bad-files", action="store_true",
                        help="skip input files that cannot be read at all (listed in the manifest) instead of stopping")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty directory that gristmill did not create")
    parser.add_argument("--fresh", action="store_true",
                        help="start from scratch: ignore the per-file work a crashed run into OUTPUT left (_work/)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on a terminal, no periodic progress lines in a log")
    add_logging_arguments(parser)


def _sampling_defaults():
    """`gristmill generate`'s option defaults: the API's SamplingConfig (gristmill/sampling.py), defined once."""
    from gristmill import api

    return api.SamplingConfig()


def _training_arguments(parser: argparse.ArgumentParser, example: str, section: str = "pretrain") -> None:
    add_config_arguments(parser, example, f"--set {section}.lr=0.0003 --set {section}.max_steps=2000")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    add_logging_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gristmill",
        description="From raw web crawls to a trained language model. Data flow: "
        "web text → corpus (Beam: read, clean, language ID, dedup) → Arrow shards → tokenizer → token shards "
        "→ trainer.",
    )
    parser.add_argument("--version", action="version", version=f"gristmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser(
        "corpus",
        help="crawl files → clean, language-partitioned Arrow shards + manifest (Apache Beam)",
        description="Read WARC/WET/JSONL/Parquet crawl files, extract and clean the text (ftfy, URL blocklist, "
        "fastText language ID, Gopher repetition and quality rules, C4 line rules, your own filters, PII redaction), "
        "remove exact and MinHash near duplicates and write Arrow shards under OUTPUT/lang=xx/ with "
        "OUTPUT/manifest.json (every input document counted: read = kept + dropped by reason) and OUTPUT/report.html. "
        "On one machine the per-file work runs on one process per core (--direct_num_workers N to choose, "
        "1 for one process). Arguments this command does not know are Beam pipeline options, passed through "
        "unchanged: --runner DataflowRunner|FlinkRunner|SparkRunner|..., --direct_num_workers 2 "
        "--direct_running_mode multi_processing, --project, --temp_location, --sdk_container_image IMAGE or "
        "--extra_package dist/gristmill-VERSION.tar.gz (workers need gristmill: python -m build --sdist) ...",
        epilog="example: gristmill corpus --input 'crawl/*.warc.gz' --output corpus/ --config configs/corpus.yaml",
    )
    _corpus_arguments(c, output_help="output directory (created; an earlier gristmill output there is replaced)")

    r = sub.add_parser(
        "refresh",
        help="a new crawl → a new corpus version, deduplicated against itself and a published corpus",
        description="Run the corpus pipeline on a new crawl and remove, besides its own exact and near duplicates, "
        "every document that duplicates one of the published corpus (any of its versions): exact duplicates by text "
        "hash, near duplicates through the published LSH index (_index/ next to its shards; the published text is "
        "never re-read, its shards never rewritten). OUTPUT holds only the new documents, with manifest.json "
        "(parent, versions) and versions.json listing every version and what it added and removed. Without --config "
        "the published corpus's own config is used. Unknown arguments are Beam pipeline options.",
        epilog="example: gristmill refresh --published corpus/2024-10 --input 'crawl-2024-11/*.warc.gz' "
        "--output corpus/2024-11",
    )
    r.add_argument("--published", required=True, metavar="DIR", help="the latest published corpus version")
    _corpus_arguments(r, output_help="directory of the new version")

    t = sub.add_parser(
        "tokenizer",
        help="train a SentencePiece tokenizer on a corpus; encode / decode text with one",
        description="SentencePiece (BPE by default) trained from the corpus's Arrow shards, streamed; exported to a "
        "Hugging Face tokenizer.json that encodes identically. See docs/tokenizer.md.",
    )
    tsub = t.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tt = tsub.add_parser(
        "train", help="train from corpus shards",
        description="Train SentencePiece on the documents of CORPUS (language-sampled by tokenizer.language_weights) "
        "and write OUTPUT/tokenizer.model, .vocab, tokenizer.json, tokenizer_config.json (chat template) and "
        "tokenizer_meta.json.",
        epilog="example: gristmill tokenizer train --corpus corpus/ --output tok/ --set tokenizer.vocab_size=32000")
    tt.add_argument("--corpus", required=True, metavar="DIR", help="a corpus directory written by `gristmill corpus`")
    tt.add_argument("--output", required=True, metavar="DIR", help="where to write the tokenizer files")
    tt.add_argument("--overwrite", action="store_true",
                    help="write into a directory that holds something else (a corpus, files gristmill did not write)")
    add_config_arguments(tt)
    add_logging_arguments(tt)
    for name, what, example in (("encode", "text → ids (or pieces with --pieces)", "'The old mill'"),
                                ("decode", "ids → text", "1034 88 5121")):
        e = tsub.add_parser(name, help=what, description=f"{what}; reads the arguments, or standard input if none.",
                            epilog=f"example: gristmill tokenizer {name} --tokenizer tok/ {example}")
        e.add_argument("--tokenizer", required=True, metavar="PATH", help="tokenizer directory or .model file")
        e.add_argument("text", nargs="*", help="text to encode, or ids to decode")
        if name == "encode":
            e.add_argument("--pieces", action="store_true", help="print pieces instead of ids")
        add_logging_arguments(e)

    k = sub.add_parser(
        "tokenize",
        help="corpus shards → packed token shards for training (Apache Beam)",
        description="Encode every document of CORPUS, join documents with eos, pack them into sequences of SEQ_LEN + 1 "
        "tokens and write OUTPUT/train/ and OUTPUT/val/ Arrow files (a fixed-size-list column of uint16/uint32, "
        "memory-mappable) with OUTPUT/manifest.json (token counts per split and language). Unknown arguments are "
        "Beam pipeline options.",
        epilog="example: gristmill tokenize --corpus corpus/ --tokenizer tok/ --output tokens/ --seq-len 1024",
    )
    k.add_argument("--corpus", required=True, metavar="DIR", help="a corpus directory written by `gristmill corpus`")
    k.add_argument("--tokenizer", required=True, metavar="PATH", help="tokenizer directory or .model file")
    k.add_argument("--output", required=True, metavar="DIR", help="where to write the token shards")
    k.add_argument("--seq-len", type=int, metavar="N", help="tokens per training sequence (default: tokenize.seq_len)")
    k.add_argument("--overwrite", action="store_true",
                   help="write into a directory that holds something else (a corpus, files gristmill did not write)")
    k.add_argument("--fresh", action="store_true",
                   help="start from scratch: ignore the shards a crashed run into OUTPUT already encoded (_work/)")
    add_config_arguments(k)
    add_logging_arguments(k)

    pt = sub.add_parser(
        "pretrain",
        help="pretrain a GPT on token shards with Ray Train (local, or a cluster through ray job submit)",
        description=PRETRAIN_DESCRIPTION,
        epilog="example: gristmill pretrain --config configs/demo.yaml --set pretrain.num_workers=2",
    )
    _training_arguments(pt, "model: and pretrain: sections, e.g. configs/demo.yaml")

    s = sub.add_parser(
        "sft", help="instruction / chat fine-tuning from a pretraining checkpoint (Ray Train)",
        description="Fine-tune a checkpoint (sft.init_checkpoint) on chat JSONL ({messages: [{role, content}]}), "
        "instruction JSONL/JSON ({instruction, input?, output|response}), question/answer JSONL (GSM8K) or "
        "OpenAssistant trees (sft.files), rendered with the ChatML template of the tokenizer; the loss is on "
        "assistant tokens only. "
        "Same loop, checkpoints and resume as `gristmill pretrain` (the sft: section holds its settings). Writes "
        "STORAGE_PATH/NAME/checkpoint_NNNNNNNN.",
        epilog="example: gristmill sft --config configs/demo.yaml --set sft.max_steps=200")
    _training_arguments(s, "configs/demo.yaml has an sft: section", "sft")
    c = sub.add_parser(
        "finetune-cls", help="sequence classification fine-tuning (causal or MLM checkpoint), accuracy and macro-F1",
        description="Add a classification head to a checkpoint (finetune_cls.init_checkpoint) and fine-tune on "
        "labelled JSONL/TSV (finetune_cls.files, text_field, label_field); reports validation accuracy and macro-F1. "
        "A causal checkpoint: a linear head on the last token's hidden state. An MLM encoder: finetune_cls.pooling "
        "mean (default: the mean over the text's tokens) or first (a <s> put before each text, BERT's [CLS]), then "
        "dense, GELU, linear (EuroBERT's head).",
        epilog="example: gristmill finetune-cls --config configs/cls-lid.yaml")
    _training_arguments(c, "configs/cls-lid.yaml", "finetune_cls")

    e = sub.add_parser(
        "eval", help="perplexity on validation token shards; k-shot multiple choice by log-likelihood; JSON report",
        description="Evaluate a checkpoint: perplexity on the val/ split of a token directory (--data; for an MLM "
        "checkpoint the masked-token perplexity and accuracy) and accuracy on multiple-choice JSONL files "
        "({question, choices, answer}; --mc; causal checkpoints), k-shot (--shots). Writes a JSON report.",
        epilog="example: gristmill eval --checkpoint runs/demo/pretrain/demo/checkpoint_00000150 "
        "--data runs/demo/tokens --mc sample/eval/genesis_next_sentence_mc.jsonl --shots 3 --output eval.json")
    e.add_argument("--checkpoint", required=True, metavar="DIR", help=CHECKPOINT_HELP)
    e.add_argument("--data", metavar="DIR", help="token directory (its val/ split) for perplexity")
    e.add_argument("--max-batches", type=int, default=0, metavar="N",
                   help="perplexity on at most N batches of 8 (0: all)")
    e.add_argument("--mc", nargs="*", default=[], metavar="JSONL", help="multiple-choice files")
    e.add_argument("--shots", type=int, default=0, metavar="K",
                   help="examples from the same file put before each question")
    e.add_argument("--limit", type=int, default=0, metavar="N", help="score only the first N items of each file")
    e.add_argument("--output", metavar="FILE", help="JSON report (default: CHECKPOINT/eval.json)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_logging_arguments(e)

    g = sub.add_parser(
        "generate", help="generate text from a checkpoint (sampling, stop sequences, KV cache, streaming, chat)",
        description="Complete a prompt (argument or standard input), streaming to stdout. --chat wraps the prompt "
        "in the tokenizer's ChatML template as a user message and stops at <|im_end|>.",
        epilog="example: gristmill generate --checkpoint runs/demo/sft/demo/checkpoint_00000040 "
        "--chat 'What is a mill?'")
    g.add_argument("--checkpoint", required=True, metavar="DIR", help=CHECKPOINT_HELP)
    g.add_argument("prompt", nargs="*", help="the prompt (default: read standard input)")
    g.add_argument("--chat", action="store_true", help="treat the prompt as a user message of a chat")
    g.add_argument("--system", metavar="TEXT", help="a system message (with --chat)")
    sampling = _sampling_defaults()
    g.add_argument("--max-new-tokens", type=_number(int, 1), default=sampling.max_new_tokens, metavar="N",
                   help="tokens to generate at most")
    g.add_argument("--temperature", type=_number(float, 0.0), default=sampling.temperature, help="0 = greedy")
    g.add_argument("--top-k", type=_number(int, 0), default=sampling.top_k or 0, help="0 = off")
    g.add_argument("--top-p", type=_number(float, 0.0, 1.0, low_open=True), default=sampling.top_p or 1.0,
                   help="in (0, 1]; 1 = off")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    g.add_argument("--seed", type=int, default=sampling.seed, help="sampling seed (the same seed, the same text)")
    g.add_argument("--no-cache", action="store_true",
                   help="recompute the whole sequence every token (slower; for checks)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_logging_arguments(g)

    pl = sub.add_parser(
        "plot", help="training runs → one PNG: loss and validation loss, learning rate, tokens/s against tokens",
        description="Overlay the metrics.jsonl of one or more training runs (pretrain, sft, finetune-cls: "
        "STORAGE_PATH/NAME) in one PNG: loss (thin) and validation loss (dots), learning rate and tokens per second, "
        "all against tokens seen. Every run also keeps its own RUN/training.png current while it trains.",
        epilog="example: gristmill plot runs/demo/pretrain/demo runs/other/pretrain/demo --output compare.png")
    pl.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each holding metrics.jsonl)")
    pl.add_argument("--output", metavar="PNG", default="training.png", help="the PNG to write")
    add_logging_arguments(pl)

    x = sub.add_parser(
        "export-hf", help="a checkpoint → a Hugging Face transformers directory (LlamaForCausalLM or EuroBERT)",
        description="Write OUTPUT with config.json (LlamaForCausalLM), model.safetensors, generation_config.json "
        "(stops at </s> and <|im_end|>), the tokenizer (tokenizer.json; tokenizer_config.json with the ChatML "
        "template and its generation markers, left padding) and a model card, loadable with AutoModelForCausalLM "
        "and AutoTokenizer. A directory holding files export-hf did not write is refused (--overwrite writes next "
        "to them; nothing is ever deleted but an earlier export's own files). An MLM checkpoint (model.objective: "
        "mlm) exports as EuroBertForMaskedLM (AutoModelForMaskedLM, the fill-mask pipeline), its classification "
        "fine-tune as EuroBertForSequenceClassification (AutoModelForSequenceClassification).",
        epilog="example: gristmill export-hf --checkpoint runs/demo/sft/demo/checkpoint_00000040 --output hf/")
    x.add_argument("--checkpoint", required=True, metavar="DIR", help=CHECKPOINT_HELP)
    x.add_argument("--output", required=True, metavar="DIR", help="the Hugging Face directory to write")
    x.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory if the checkpoint carries none")
    x.add_argument("--overwrite", action="store_true",
                   help="export into a directory that holds other files (they are left as they are, never deleted)")
    add_logging_arguments(x)

    v = sub.add_parser(
        "verify", help="re-check a corpus or token directory against its manifest (checksums, rows, counts)",
        description="Check that every shard the manifest of DIR lists is present with its SHA-256 and row count, "
        "and that the counts balance (read = kept + dropped by reason). Exit status 0 when sound, 6 naming each "
        "difference otherwise (also when DIR has no manifest: not a finished output).",
        epilog="example: gristmill verify corpus/2024-11 && gristmill tokenize --corpus corpus/2024-11 ...\n\n"
        "example: gristmill verify s3://bucket/corpus/2024-11 --s3_region_name eu-west-1\n\n"
        "An object store's credentials and endpoint are Beam's filesystem options (--s3_endpoint_url, "
        "--s3_access_key_id, ...; GCS: the environment's credentials).")
    v.add_argument("directory", metavar="DIR", help="a corpus or token directory")
    add_logging_arguments(v)

    q = sub.add_parser(
        "quality",
        help="train the model-based quality classifier (fastText-format, DCLM's recipe)",
        description="Model-based quality scoring: `quality train` fits a linear classifier on word uni+bigrams, "
        "high-quality text against crawl text; `gristmill corpus --set clean.quality.enabled=true` scores and "
        "filters with it (the shipped model unless clean.quality.model names yours). See docs/corpus.md.",
        epilog="example: gristmill quality train --positive 'books/*.txt' --negative 'crawl/*.jsonl.gz' --output q/",
    )
    qsub = q.add_subparsers(dest="quality_command", metavar="ACTION")
    qt = qsub.add_parser(
        "train", help="train a classifier: positive (high-quality) against negative (crawl) documents",
        description="Train on POSITIVE and NEGATIVE files (JSONL/JSON records: `text`, else every string field; "
        "corpus shards .arrow/.parquet; plain .txt cut into paragraph groups), hold out a share of each class "
        "(chosen by a hash of the text and --seed) and write OUTPUT/model.bin (a fastText supervised model: "
        "labels __label__hq and __label__cc), OUTPUT/metadata.json (inputs with SHA-256, counts, parameters, "
        "held-out precision, recall and ROC AUC) and OUTPUT/report.md. The same inputs and seed give the same "
        "model, byte for byte.",
        epilog="example: gristmill quality train --positive 'books/*.txt' 'sft/*.jsonl' "
        "--negative 'crawl/*.jsonl.gz' --output quality-model/")
    qt.add_argument("--positive", required=True, nargs="+", metavar="GLOB", help="high-quality documents")
    qt.add_argument("--negative", required=True, nargs="+", metavar="GLOB", help="crawl documents")
    qt.add_argument("--output", required=True, metavar="DIR", help="where to write the model and its metadata")
    qt.add_argument("--overwrite", action="store_true",
                    help="write into a directory that holds something else (files gristmill did not write)")
    from gristmill import api

    defaults = api.quality_params()
    for name, kind, what in (("seed", int, "seed of the split, the initialisation and the order"),
                             ("holdout", float, "share of each class held out for the metrics"),
                             ("epochs", int, "passes over the training documents"),
                             ("lr", float, "learning rate, decaying linearly to 0"),
                             ("dim", int, "embedding size"),
                             ("bucket", int, "hashed bigram rows"),
                             ("min_count", int, "words seen fewer times get no row of their own"),
                             ("max_words", int, "words of a document used (its start)")):
        qt.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name), metavar="N",
                        help=f"{what} (default {getattr(defaults, name)})")
    add_logging_arguments(qt)

    ab = sub.add_parser(
        "ablate",
        help="data ablation: the same model trained on each data variant, compared on held-out sets (FineWeb's method)",
        description="For each variant of ablate.variants (a corpus directory, or corpus settings run over "
        "ablate.inputs: base raw = extraction and language ID only, base default, plus dotted overrides in set:), "
        "build the corpus, tokenize every variant with one shared tokenizer, pretrain the model: section's model "
        "for ablate.tokens tokens once per seed of ablate.seeds (Ray Train; runs in parallel when Ray has the "
        "CPUs/GPUs), evaluate ablate.eval_points checkpoints per run on the held-out sets (ablate.heldout: "
        "bits per byte and loss per token on clean text never trained on; ablate.mc: multiple-choice accuracy), and "
        "write ablate.output/results.md (variant x metric, mean ± std over seeds, the difference from the baseline "
        "paired by seed with its Holm-corrected 95 % interval; better or worse only where it excludes 0), "
        "results.json and heldout_loss.png. Run again, it skips "
        "finished steps and resumes training runs. Errors before any training: missing corpus directories, "
        "variants whose data is too small for the token budget (ablate.max_epochs), held-out text found in a "
        "variant's corpus or its quality classifier's inputs (the leak check), unknown settings.",
        epilog="example: gristmill ablate --config configs/ablate.yaml --set ablate.tokens=500000")
    ab.add_argument("--overwrite", action="store_true",
                    help="write into ablate.output although it holds something else (files gristmill did not write)")
    ab.add_argument("--no-progress", action="store_true", help="no progress bars")
    ab.add_argument("--allow-overlap", action="store_true",
                    help="run although a held-out set overlaps a variant's corpus or its quality classifier's "
                    "inputs (the leak check's numbers go to results.json); without it such an ablation stops")
    add_config_arguments(ab, "an ablate: section (with the corpus, tokenizer, tokenize, model and pretrain "
                         "settings every variant shares), e.g. configs/ablate.yaml")
    add_logging_arguments(ab)

    d = sub.add_parser(
        "demo",
        help="the main job end to end on the bundled sample crawl (CPU, minutes)",
        description="The main job on the sample crawl bundled in sample/crawl with configs/demo.yaml: the corpus "
        "pipeline (OUTPUT/corpus), tokenizer training (OUTPUT/tokenizer), token shards (OUTPUT/tokens) and a short "
        "CPU pretraining of a small GPT with Ray Train (OUTPUT/pretrain/demo: checkpoints, metrics.jsonl, "
        "TensorBoard), a short instruction fine-tuning (OUTPUT/sft/demo) and a generated answer to a question. "
        "Running it again resumes or repeats each step deterministically. The sample and the config ship "
        "inside the gristmill wheel (an installed gristmill needs no checkout).",
        epilog="example: gristmill demo --output runs/demo",
    )
    d.add_argument("--output", default="runs/demo", metavar="DIR", help="where to write (default: runs/demo)")
    d.add_argument("--until", choices=DEMO_STEPS, default=DEMO_STEPS[-1], metavar="STEP",
                   help=f"stop after this step: {', '.join(DEMO_STEPS)}")
    add_logging_arguments(d)
    _add_config_help({**sub.choices, **{f"tokenizer {k}": v for k, v in tsub.choices.items()}})
    return parser


# ---------------------------------------------------------------------------------------------
# What the commands print
# ---------------------------------------------------------------------------------------------


def _print_corpus(result, quiet: bool) -> None:
    from gristmill import api

    if not quiet:
        api.print_corpus_summary(result.manifest, result.seconds)
        for v in result.manifest.get("versions", []):
            removed = sum(v["removed_as_duplicates_of_published"].values())
            print(f"version {v['path']}: read {v['read']:,}, added {v['added']:,}, "
                  f"removed as published duplicates {removed:,}")
    print(f"manifest: {result.manifest_path}")
    if result.report_path and "versions" not in result.manifest:
        print(f"report:   {result.report_path}")


def _print_tokenizer(result, cfg, output: str) -> None:
    m = result.meta
    print(f"tokenizer: {m['vocab_size']:,} pieces ({cfg.tokenizer.model_type}) from {m['documents']:,} documents, "
          f"{m['lines_streamed']:,} lines, in {result.seconds:.1f} s → {output}")


def _print_tokens(result, cfg) -> None:
    for split, s in result.manifest["splits"].items():
        print(f"{split}: {s['documents']:,} documents, {s['tokens']:,} tokens → {s['sequences']:,} sequences of "
              f"{cfg.tokenize.seq_len + 1} ({s['tokens_dropped']:,} tokens dropped at bucket ends), "
              f"{len(s['shards'])} shards")
    print(f"manifest: {result.manifest_path}")


# ---------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------


def _config(args):
    from gristmill.config import load_config

    return load_config(args.config, args.set)


def _cmd_corpus(args, beam_args: list[str]) -> int:
    from gristmill import api

    result = api.run_corpus(args.input, args.output, _config(args), beam_args, skip_bad_files=args.skip_bad_files,
                            overwrite=args.overwrite, progress=not (args.quiet or args.no_progress), fresh=args.fresh)
    _print_corpus(result, args.quiet)
    return 0


def _cmd_refresh(args, beam_args: list[str]) -> int:
    from gristmill import api

    config = _config(args) if args.config or args.set else None  # None: the published corpus's config
    result = api.refresh(args.published, args.input, args.output, config, beam_args,
                         skip_bad_files=args.skip_bad_files, overwrite=args.overwrite,
                         progress=not (args.quiet or args.no_progress), fresh=args.fresh)
    _print_corpus(result, args.quiet)
    return 0


def _cmd_tokenizer(args, beam_args: list[str]) -> int:
    from gristmill import api

    if args.tokenizer_command == "train":
        cfg = _config(args)
        _print_tokenizer(api.train_tokenizer(args.corpus, args.output, cfg, progress=not args.quiet,
                                             overwrite=args.overwrite), cfg, args.output)
        return 0
    sp = api.load_tokenizer(args.tokenizer)
    items = args.text or [sys.stdin.read()]
    if args.tokenizer_command == "encode":
        for text in items:
            out = sp.encode(text, out_type=str) if args.pieces else sp.encode(text)
            print(" ".join(map(str, out)))
        return 0
    print(api.decode(sp, [x for item in items for x in item.split()]))
    return 0


def _cmd_tokenize(args, beam_args: list[str]) -> int:
    from gristmill import api
    from gristmill.config import load_config

    overrides = list(args.set) + ([f"tokenize.seq_len={args.seq_len}"] if args.seq_len else [])
    cfg = load_config(args.config, overrides)
    result = api.tokenize(args.corpus, args.tokenizer, args.output, cfg, beam_args, overwrite=args.overwrite,
                          fresh=args.fresh)
    _print_tokens(result, cfg)
    return 0


def _train_command(task: str):
    def command(args, beam_args: list[str]) -> int:
        from gristmill import api

        progress = sys.stderr.isatty() and not args.no_progress and not args.quiet
        run = {"pretrain": api.pretrain, "sft": api.sft, "cls": api.finetune_cls}[task]
        api.print_training_summary(task, run(_config(args), progress=progress))
        return 0

    return command


def _cmd_eval(args, beam_args: list[str]) -> int:
    from gristmill import api

    def show(name: str, r: dict) -> None:
        if name == "perplexity" and r.get("objective") == "mlm":
            print(f"masked-token perplexity: {r['perplexity']:.2f} (loss {r['loss']:.4f}, accuracy {r['accuracy']:.3f} "
                  f"over {r['masked_tokens']:,} masked tokens of {args.data}/val)")
        elif name == "perplexity":
            print(f"perplexity: {r['perplexity']:.2f} (loss {r['loss']:.4f} over {r['tokens']:,} tokens "
                  f"of {args.data}/val)")
        else:
            print(f"{name}: accuracy {r['accuracy']:.3f}, normalised {r['accuracy_norm']:.3f} "
                  f"({r['items']} items, {r['shots']}-shot; chance {r['chance']:.3f})")

    report = api.evaluate(args.checkpoint, data=args.data, mc=args.mc, shots=args.shots, limit=args.limit,
                          max_batches=args.max_batches, device=args.device, on_result=show)
    out = Path(args.output) if args.output else Path(args.checkpoint) / "eval.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"report: {out}")
    return 0


def _cmd_generate(args, beam_args: list[str]) -> int:
    from gristmill import api

    api.resolve_checkpoint(args.checkpoint)  # before the prompt is echoed
    prompt = " ".join(args.prompt) if args.prompt else sys.stdin.read()
    sampling = api.SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k or None, top_p=args.top_p if args.top_p < 1 else None,
                              stop=tuple(args.stop), use_cache=not args.no_cache, seed=args.seed)
    if not args.chat:
        print(prompt, end="", flush=True)
    api.generate(args.checkpoint, prompt, sampling, chat=args.chat, system=args.system, device=args.device,
                 on_text=lambda t: print(t, end="", flush=True))
    print()
    return 0


def _cmd_plot(args, beam_args: list[str]) -> int:
    from gristmill import api

    print(f"plot: {api.plot(args.runs, args.output)}")
    return 0


def _cmd_export(args, beam_args: list[str]) -> int:
    from gristmill import api

    out = api.export_hf(args.checkpoint, args.output, args.tokenizer, overwrite=args.overwrite)
    print(f"exported: {out} (LlamaForCausalLM + tokenizer; "
          "load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def _cmd_verify(args, beam_args: list[str]) -> int:
    from gristmill import api
    from gristmill.errors import ExitCode

    problems = api.verify(args.directory, beam_args)
    for p in problems:
        print(f"{args.directory}: {p}", file=sys.stderr)
    print(f"{args.directory}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return int(ExitCode.INTEGRITY if problems else ExitCode.OK)


def _cmd_demo(args, beam_args: list[str]) -> int:
    """The demo: the API functions one after the other, printing what each command prints, on the
    sample and config shipped with gristmill (package data of the wheel, or a checkout's folders)."""
    from gristmill import api

    out, config, until = Path(args.output), api.demo_config_path(), DEMO_STEPS.index(args.until)
    corpus, tok, tokens = out / "corpus", out / "tokenizer", out / "tokens"
    cfg = api.load_config(config)
    sample = str(api.sample_path("crawl") / "*")
    log.info("demo 1/5: corpus pipeline on %s", sample)
    _print_corpus(api.run_corpus([sample], str(corpus), cfg, beam_args, progress=not args.quiet), args.quiet)
    if until < 1:
        return 0
    log.info("demo 2/5: tokenizer training on %s", corpus)
    _print_tokenizer(api.train_tokenizer(str(corpus), str(tok), cfg, progress=not args.quiet), cfg, str(tok))
    if until < 2:
        return 0
    log.info("demo 3/5: token shards")
    _print_tokens(api.tokenize(str(corpus), str(tok), str(tokens), cfg, beam_args), cfg)
    if until < 3:
        return 0
    log.info("demo 4/5: pretraining a small GPT on the token shards (Ray Train, CPU)")
    progress = sys.stderr.isatty() and not args.quiet
    cfg = api.load_config(config, [f"pretrain.data={tokens}", f"pretrain.storage_path={out / 'pretrain'}"])
    api.print_training_summary("pretrain", api.pretrain(cfg, progress=progress))
    pretrained = api.latest_checkpoint(out / "pretrain" / "demo")
    if until < 4:
        return 0
    log.info("demo 5/5: instruction fine-tuning (SFT) of %s, then an answer", pretrained)
    sft_files = ", ".join(str(api.sample_path("sft", f)) for f in
                          ("oasst_en_100_rank0_conversations.jsonl", "self_instruct_seed_tasks.jsonl"))
    cfg = api.load_config(config, [f"sft.init_checkpoint={pretrained}", f"sft.files=[{sft_files}]",
                                   f"sft.storage_path={out / 'sft'}"])
    api.print_training_summary("sft", api.sft(cfg, progress=progress))
    tuned = api.latest_checkpoint(out / "sft" / "demo")
    question = "What is a mill used for?"
    params = api.count_parameters(tuned) / 1e6
    print(f"\nuser: {question}\nassistant (a {params:.1f}M-parameter model trained for minutes on a CPU; "
          "expect little sense): ", end="")
    sampling = api.SamplingConfig(max_new_tokens=48, temperature=1.0, top_k=100, top_p=0.95, seed=0)
    api.generate(str(tuned), question, sampling, chat=True, on_text=lambda t: print(t, end="", flush=True))
    print()
    return 0


def _cmd_ablate(args, beam_args: list[str]) -> int:
    from gristmill import api

    cfg = _config(args)
    if args.allow_overlap:
        cfg = cfg.model_copy(update={"ablate": cfg.ablate.model_copy(update={"allow_overlap": True})})
    result = api.ablate(cfg, beam_args, overwrite=args.overwrite, progress=not (args.no_progress or args.quiet))
    print(result.markdown)
    print(f"results: {result.results_path}")
    if result.plot_path:
        print(f"plot:    {result.plot_path}")
    print(f"in {result.seconds:.0f} s")
    return 0


def _cmd_quality(args, beam_args: list[str]) -> int:
    from dataclasses import fields

    from gristmill import api

    params = api.quality_params(**{f.name: getattr(args, f.name) for f in fields(api.quality_params())
                                   if hasattr(args, f.name)})

    def progress(epoch, epochs, loss):
        if not args.quiet:
            print(f"epoch {epoch}/{epochs}: training loss {loss:.4f}", file=sys.stderr, flush=True)

    meta = api.train_quality(args.positive, args.negative, args.output, params, overwrite=args.overwrite,
                             on_epoch=progress)
    ho, c = meta["holdout"], meta["counts"]
    print(f"{args.output}/model.bin: {c['positive']:,} positive and {c['negative']:,} negative documents, "
          f"{c['holdout']:,} held out: precision {ho['precision']:.3f}, recall {ho['recall']:.3f}, "
          f"ROC AUC {ho['auc']:.3f}")
    return 0


COMMANDS = {
    "corpus": _cmd_corpus, "refresh": _cmd_refresh, "tokenizer": _cmd_tokenizer, "tokenize": _cmd_tokenize,
    "pretrain": _train_command("pretrain"), "sft": _train_command("sft"), "finetune-cls": _train_command("cls"),
    "eval": _cmd_eval, "generate": _cmd_generate, "export-hf": _cmd_export, "plot": _cmd_plot, "verify": _cmd_verify,
    "demo": _cmd_demo, "quality": _cmd_quality, "ablate": _cmd_ablate,
}


def _subparser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    if args.command == "tokenizer" and getattr(args, "tokenizer_command", None):
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[args.tokenizer_command]
    return sub


def _import_runner_options(args: list[str]) -> None:
    """A runner's own options (the DaskRunner's --dask_client_address, ...) exist once its module is
    imported: import the module of the runner ``--runner`` names, as Beam itself will."""
    import importlib

    from apache_beam.runners.runner import _RUNNER_MAP

    name = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), None)
    if name is None and "--runner" in args[:-1]:
        name = args[args.index("--runner") + 1]
    if not name:
        return
    path = _RUNNER_MAP.get(name.lower(), _RUNNER_MAP.get(name.lower() + "runner", name))
    if "." not in path:
        return
    try:
        importlib.import_module(path.rsplit(".", 1)[0])
    except Exception:  # noqa: BLE001 - a runner that cannot load says so itself when the pipeline starts
        log.debug("could not import the runner %s to check its options", path)


def _unknown_beam_options(args: list[str]) -> tuple[list[str], list[str]]:
    """(arguments no Beam pipeline option class accepts, every Beam option string): what Beam itself
    would only warn about and drop, a misspelled --runner among them."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    _import_runner_options(args)
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(args)
    return unknown, [o for a in parser._actions for o in a.option_strings]


def _check_unknown(parser: argparse.ArgumentParser, args, rest: list[str]) -> None:
    """Unknown options are errors that name the option and what it may have meant; a Beam command
    passes on the options some Beam pipeline option class knows (and everything after ``--``)."""
    sub = _subparser(parser, args)
    ours = [o for a in sub._actions for o in a.option_strings]
    unknown, known = rest, ours
    if args.command in BEAM_COMMANDS:
        unknown, beam_options = _unknown_beam_options(rest)
        known = ours + beam_options
    if not unknown:
        return
    first = next((u for u in unknown if u.startswith("-")), unknown[0])
    close = difflib.get_close_matches(first.split("=", 1)[0], known, n=2, cutoff=0.7)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    if args.command in BEAM_COMMANDS:
        hint += (" (options gristmill does not know must be Beam pipeline options; "
                 "put options for another tool after --)")
    sub.error(f"unrecognized argument {first}{hint}")


def main(argv: list[str] | None = None) -> int:
    # gRPC (Beam's in-process data plane) logs an INFO line at each fork of the per-file work pool
    # (pipelines/workpool.py); read by gRPC when it starts, so set before any pipeline runs
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    redact_argv(argv)  # remembers the credentials given, before anything can log them (gristmill.secrets)
    passthrough: list[str] = []
    if "--" in argv:  # everything after -- goes to the runner unchecked
        at = argv.index("--")
        argv, passthrough = argv[:at], argv[at + 1:]
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(verbosity(args))
    if args.command == "tokenizer" and not args.tokenizer_command:
        parser.parse_args(["tokenizer", "--help"])
    if args.command == "quality" and not args.quality_command:
        parser.parse_args(["quality", "--help"])  # prints the actions and exits
    if rest:
        _check_unknown(parser, args, rest)
    if passthrough and args.command not in BEAM_COMMANDS:
        _subparser(parser, args).error(f"arguments after -- are Beam pipeline options; {args.command} takes none")
    return run_command(args.command, lambda: COMMANDS[args.command](args, rest + passthrough))


if __name__ == "__main__":
    sys.exit(main())
