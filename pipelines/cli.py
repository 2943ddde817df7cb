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

    d = sub.add_parser(
        "demo",
        help="the main job end to end on the bundled sample crawl (CPU, minutes)",
        description="Run the corpus pipeline on the sample crawl bundled in sample/crawl with configs/demo.yaml and "
        "print the funnel. Later stages (tokenizer, training) join this command as they land.",
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


def _cmd_demo(args, beam_args: list[str]) -> int:
    ns = argparse.Namespace(
        input=[SAMPLE_GLOB], output=args.output, config=str(DEMO_CONFIG), set=[],
        skip_bad_files=False, overwrite=False, quiet=args.quiet,
    )
    log.info("demo: corpus pipeline on %s", SAMPLE_GLOB)
    return _cmd_corpus(ns, beam_args)


def main(argv: list[str] | None = None) -> int:
    from pipelines.log import setup_logging

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(-1 if getattr(args, "quiet", False) else args.verbose)
    if rest and args.command not in ("corpus", "refresh", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from pipelines.config import ConfigError
    from pipelines.corpus import OutputDirError, PipelineInputError
    from pipelines.langid import ModelError
    from pipelines.refresh_index import RefreshError

    try:
        if args.command == "corpus":
            return _cmd_corpus(args, rest)
        if args.command == "refresh":
            return _cmd_refresh(args, rest)
        if args.command == "demo":
            return _cmd_demo(args, rest)
    except (ConfigError, PipelineInputError, OutputDirError, ModelError, RefreshError, FileNotFoundError) as e:
        print(f"gristmill {args.command}: error: {e}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
