"""``gristmill``: the one command line. ``gristmill <subcommand> --help`` explains each step."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipelines import __version__

log = logging.getLogger("gristmill")

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_GLOB = str(REPO_ROOT / "sample" / "crawl" / "*")
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (configs/corpus.yaml documents every key); defaults if omitted")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[],
        help="override one config key, e.g. --set langid.threshold=0.8 --set 'langid.keep=[en,de]' (repeatable)",
    )


def _run_args(parser: argparse.ArgumentParser, output_help: str) -> None:
    """Arguments of the commands that run the corpus pipeline."""
    parser.add_argument("--input", nargs="+", required=True, metavar="GLOB", help="input files or globs (quote globs); local paths or gs://, s3:// ...")
    parser.add_argument("--output", required=True, metavar="DIR", help=output_help)
    _config_args(parser)
    parser.add_argument("--skip-bad-files", action="store_true", help="skip input files that cannot be read at all (listed in the manifest) instead of stopping")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty directory that gristmill did not create")
    _common(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gristmill",
        description="From raw web crawls to a trained language model. Data flow: "
        "web text → corpus (Beam: read, clean, language ID, dedup) → Arrow shards → tokenizer → token shards → trainer.",
    )
    parser.add_argument("--version", action="version", version=f"gristmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser(
        "corpus",
        help="crawl files → clean, language-partitioned Arrow shards + manifest (Apache Beam)",
        description="Read WARC/WET/JSONL/Parquet crawl files, extract and clean the text (ftfy, URL blocklist, "
        "fastText language ID, Gopher repetition and quality rules, C4 line rules, PII redaction), remove exact "
        "and MinHash near duplicates and write Arrow shards under OUTPUT/lang=xx/ with OUTPUT/manifest.json (every input document "
        "counted: read = kept + dropped by reason) and OUTPUT/report.html. "
        "Arguments this command does not know are Beam pipeline options, passed through unchanged: "
        "--runner DataflowRunner|FlinkRunner|SparkRunner|..., --direct_num_workers 2 "
        "--direct_running_mode multi_processing, --project, --temp_location, --setup_file ./setup.py ...",
        epilog="example: gristmill corpus --input 'crawl/*.warc.gz' --output corpus/ --config configs/corpus.yaml",
    )
    _run_args(c, output_help="output directory (created; an earlier gristmill output there is replaced)")

    r = sub.add_parser(
        "refresh",
        help="a new crawl → a new corpus version, deduplicated against itself and a published corpus",
        description="Run the corpus pipeline on a new crawl and remove, besides its own exact and near duplicates, "
        "every document that duplicates one of the published corpus (any of its versions): exact duplicates by text "
        "hash, near duplicates through the published LSH index (_index/ next to its shards; the published text is "
        "never re-read, its shards never rewritten). OUTPUT holds only the new documents, with manifest.json "
        "(parent, versions) and versions.json listing every version and what it added and removed. Without --config "
        "the published corpus's own config is used. Unknown arguments are Beam pipeline options.",
        epilog="example: gristmill refresh --published corpus/2024-10 --input 'crawl-2024-11/*.warc.gz' --output corpus/2024-11",
    )
    r.add_argument("--published", required=True, metavar="DIR", help="the latest published corpus version")
    _run_args(r, output_help="directory of the new version")

    t = sub.add_parser(
        "tokenizer",
        help="train a SentencePiece tokenizer on a corpus; encode / decode text with one",
        description="SentencePiece (BPE by default) trained from the corpus's Arrow shards, streamed; exported to a "
        "Hugging Face tokenizer.json that encodes identically. See docs/tokenizer.md.",
    )
    tsub = t.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tt = tsub.add_parser("train", help="train from corpus shards", description="Train SentencePiece on the documents of CORPUS "
                         "(language-sampled by tokenizer.language_weights) and write OUTPUT/tokenizer.model, .vocab, "
                         "tokenizer.json, tokenizer_config.json (chat template) and tokenizer_meta.json.")
    tt.add_argument("--corpus", required=True, metavar="DIR", help="a corpus directory written by `gristmill corpus`")
    tt.add_argument("--output", required=True, metavar="DIR", help="where to write the tokenizer files")
    _config_args(tt)
    _common(tt)
    for name, what in (("encode", "text → ids (or pieces with --pieces)"), ("decode", "ids → text")):
        e = tsub.add_parser(name, help=what, description=f"{what}; reads the arguments, or standard input if none.")
        e.add_argument("--tokenizer", required=True, metavar="PATH", help="tokenizer directory or .model file")
        e.add_argument("text", nargs="*", help="text to encode, or ids to decode")
        if name == "encode":
            e.add_argument("--pieces", action="store_true", help="print pieces instead of ids")
        _common(e)

    k = sub.add_parser(
        "tokenize",
        help="corpus shards → packed token shards for training (Apache Beam)",
        description="Encode every document of CORPUS, join documents with eos, pack them into sequences of SEQ_LEN + 1 "
        "tokens and write OUTPUT/train/ and OUTPUT/val/ Arrow files (a fixed-size-list column of uint16/uint32, "
        "memory-mappable) with OUTPUT/manifest.json (token counts per split and language). Unknown arguments are "
        "Beam pipeline options.",
    )
    k.add_argument("--corpus", required=True, metavar="DIR", help="a corpus directory written by `gristmill corpus`")
    k.add_argument("--tokenizer", required=True, metavar="PATH", help="tokenizer directory or .model file")
    k.add_argument("--output", required=True, metavar="DIR", help="where to write the token shards")
    k.add_argument("--seq-len", type=int, metavar="N", help="tokens per training sequence (default: tokenize.seq_len)")
    _config_args(k)
    _common(k)

    from trainer.pretrain import DESCRIPTION as PRETRAIN_DESCRIPTION, add_arguments as pretrain_arguments

    pt = sub.add_parser(
        "pretrain",
        help="pretrain a GPT on token shards with Ray Train (local, or a cluster through ray job submit)",
        description=PRETRAIN_DESCRIPTION,
        epilog="example: gristmill pretrain --config configs/demo.yaml --set pretrain.num_workers=2",
    )
    pretrain_arguments(pt)
    _common(pt)

    from trainer.commands import add_parsers as trainer_parsers

    trainer_parsers(sub, _common)

    d = sub.add_parser(
        "demo",
        help="the main job end to end on the bundled sample crawl (CPU, minutes)",
        description="The main job on the sample crawl bundled in sample/crawl with configs/demo.yaml: the corpus "
        "pipeline (OUTPUT/corpus), tokenizer training (OUTPUT/tokenizer), token shards (OUTPUT/tokens) and a short "
        "CPU pretraining of a small GPT with Ray Train (OUTPUT/pretrain/demo: checkpoints, metrics.jsonl, TensorBoard), "
        "a short instruction fine-tuning (OUTPUT/sft/demo) and a generated answer to a question. "
        "Running it again resumes or repeats each step deterministically.",
    )
    d.add_argument("--output", default="runs/demo", metavar="DIR", help="where to write (default: runs/demo)")
    _common(d)
    return parser


def _cmd_corpus(args, beam_args: list[str]) -> int:
    from pipelines.config import load_config
    from pipelines.corpus import run_corpus
    from pipelines.report import print_summary

    cfg = load_config(args.config, args.set)
    result = run_corpus(
        args.input, args.output, cfg, beam_args,
        skip_bad_files=args.skip_bad_files, overwrite=args.overwrite, progress=not args.quiet,
    )
    if not args.quiet:
        print_summary(result.manifest, result.seconds)
    print(f"manifest: {result.manifest_path}")
    if result.report_path:
        print(f"report:   {result.report_path}")
    return 0


def _cmd_refresh(args, beam_args: list[str]) -> int:
    from pipelines.config import load_config
    from pipelines.corpus import run_corpus
    from pipelines.refresh_index import PublishedCorpus
    from pipelines.report import print_summary

    published = PublishedCorpus.open(args.published)
    if args.config or args.set:
        cfg = load_config(args.config, args.set)
    else:
        cfg = published.default_config()
    published.check_compatible(cfg)
    result = run_corpus(
        args.input, args.output, cfg, beam_args,
        skip_bad_files=args.skip_bad_files, overwrite=args.overwrite, progress=not args.quiet, published=published,
    )
    if not args.quiet:
        print_summary(result.manifest, result.seconds)
        for v in result.manifest["versions"]:
            removed = sum(v["removed_as_duplicates_of_published"].values())
            print(f"version {v['path']}: read {v['read']:,}, added {v['added']:,}, removed as published duplicates {removed:,}")
    print(f"manifest: {result.manifest_path}")
    return 0


def _cmd_tokenizer(args, beam_args: list[str]) -> int:
    import sys as _sys

    from pipelines.config import load_config
    from tokenizer.train import load, train_tokenizer

    if args.tokenizer_command == "train":
        cfg = load_config(args.config, args.set)
        result = train_tokenizer(args.corpus, args.output, cfg.tokenizer)
        m = result.meta
        print(f"tokenizer: {m['vocab_size']:,} pieces ({cfg.tokenizer.model_type}) from {m['documents']:,} documents, "
              f"{m['lines_streamed']:,} lines, in {result.seconds:.1f} s → {args.output}")
        return 0
    sp = load(args.tokenizer)
    items = args.text or [_sys.stdin.read()]
    if args.tokenizer_command == "encode":
        for text in items:
            out = sp.encode(text, out_type=str) if args.pieces else sp.encode(text)
            print(" ".join(map(str, out)))
        return 0
    ids = [int(x) for item in items for x in item.split()]
    print(sp.decode(ids))
    return 0


def _cmd_tokenize(args, beam_args: list[str]) -> int:
    from pipelines.config import load_config
    from pipelines.tokenize import run_tokenize

    overrides = list(args.set) + ([f"tokenize.seq_len={args.seq_len}"] if args.seq_len else [])
    cfg = load_config(args.config, overrides)
    result = run_tokenize(args.corpus, args.tokenizer, args.output, cfg.tokenize, beam_args)
    for split, s in result.manifest["splits"].items():
        print(f"{split}: {s['documents']:,} documents, {s['tokens']:,} tokens → {s['sequences']:,} sequences of "
              f"{cfg.tokenize.seq_len + 1} ({s['tokens_dropped']:,} tokens dropped at bucket ends), {len(s['shards'])} shards")
    print(f"manifest: {result.manifest_path}")
    return 0


def _cmd_demo(args, beam_args: list[str]) -> int:
    from pathlib import Path

    out = Path(args.output)
    corpus, tok, tokens = out / "corpus", out / "tokenizer", out / "tokens"
    log.info("demo 1/5: corpus pipeline on %s", SAMPLE_GLOB)
    ns = argparse.Namespace(
        input=[SAMPLE_GLOB], output=str(corpus), config=str(DEMO_CONFIG), set=[],
        skip_bad_files=False, overwrite=False, quiet=args.quiet,
    )
    _cmd_corpus(ns, beam_args)
    log.info("demo 2/5: tokenizer training on %s", corpus)
    _cmd_tokenizer(argparse.Namespace(tokenizer_command="train", corpus=str(corpus), output=str(tok),
                                      config=str(DEMO_CONFIG), set=[]), beam_args)
    log.info("demo 3/5: token shards")
    _cmd_tokenize(argparse.Namespace(corpus=str(corpus), tokenizer=str(tok), output=str(tokens),
                                     config=str(DEMO_CONFIG), set=[], seq_len=None), beam_args)
    log.info("demo 4/5: pretraining a small GPT on the token shards (Ray Train, CPU)")
    _cmd_pretrain(argparse.Namespace(
        config=str(DEMO_CONFIG), set=[f"pretrain.data={tokens}", f"pretrain.storage_path={out / 'pretrain'}"],
        no_progress=False, quiet=args.quiet))
    from trainer.checkpoint import latest_checkpoint
    from trainer.commands import cmd_generate, cmd_sft

    pretrained = latest_checkpoint(out / "pretrain" / "demo")
    log.info("demo 5/5: instruction fine-tuning (SFT) of %s, then an answer", pretrained)
    sft_files = ", ".join(str(REPO_ROOT / "sample" / "sft" / f) for f in
                          ("oasst_en_100_rank0_conversations.jsonl", "self_instruct_seed_tasks.jsonl"))
    cmd_sft(argparse.Namespace(config=str(DEMO_CONFIG), set=[f"sft.init_checkpoint={pretrained}", f"sft.files=[{sft_files}]",
                                                              f"sft.storage_path={out / 'sft'}"],
                               no_progress=False, quiet=args.quiet))
    tuned = latest_checkpoint(out / "sft" / "demo")
    question = "What is a mill used for?"
    print(f"\nuser: {question}\nassistant (a {_params(tuned)} model trained for minutes on a CPU; expect little sense): ", end="")
    return cmd_generate(argparse.Namespace(
        checkpoint=str(tuned), prompt=[question], chat=True, system=None, max_new_tokens=48, temperature=1.0, top_k=100,
        top_p=0.95, stop=[], seed=0, no_cache=False, device="auto"))


def _params(checkpoint) -> str:
    from trainer.checkpoint import load_model

    return f"{load_model(checkpoint).num_params() / 1e6:.1f}M-parameter"


def main(argv: list[str] | None = None) -> int:
    from pipelines.log import setup_logging

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(-1 if getattr(args, "quiet", False) else args.verbose)
    if rest and args.command not in ("corpus", "refresh", "tokenize", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "tokenizer" and not args.tokenizer_command:
        parser.parse_args(["tokenizer", "--help"])
    commands = {"corpus": _cmd_corpus, "refresh": _cmd_refresh, "tokenizer": _cmd_tokenizer, "tokenize": _cmd_tokenize,
                "demo": _cmd_demo, "pretrain": lambda a, _rest: _cmd_pretrain(a)}
    from trainer.commands import COMMANDS as TRAINER_COMMANDS

    commands.update({name: (lambda fn: lambda a, _rest: fn(a))(fn) for name, fn in TRAINER_COMMANDS.items()})
    if args.command not in commands:
        parser.error(f"unknown command {args.command}")
    return error_exit(args.command, lambda: commands[args.command](args, rest))


def error_exit(command: str, fn) -> int:
    """Run a command; errors the user can fix print one clear line (exit 2) instead of a traceback."""
    from pipelines.config import ConfigError
    from pipelines.corpus import OutputDirError, PipelineInputError
    from pipelines.langid import ModelError
    from pipelines.refresh_index import RefreshError
    from tokenizer.train import TokenizerError
    from trainer.data import DataError
    from trainer.finetune_data import FinetuneDataError
    from trainer import TrainingDivergedError

    try:
        return fn()
    except (ConfigError, PipelineInputError, OutputDirError, ModelError, RefreshError, TokenizerError, DataError,
            FinetuneDataError, FileNotFoundError) as e:
        print(f"gristmill {command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDivergedError as e:
        print(f"gristmill {command}: training diverged: {e}", file=sys.stderr)
        return 3


def _cmd_pretrain(args) -> int:
    from trainer.pretrain import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
