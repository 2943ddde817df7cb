"""``python -m gristmill.trainer.job --config FILE``: the entry point ``ray job submit`` runs.

The same run as ``gristmill pretrain`` (see its ``--help``). Under ``ray job submit`` Ray sets
RAY_ADDRESS and the run joins that cluster; otherwise Ray starts in this process. Paths in the
config should be absolute (or relative to where the job runs) and reachable from every node.
"""

from __future__ import annotations

import argparse
import sys

from gristmill.config import add_config_arguments, load_config
from gristmill.errors import run_command
from gristmill.log import add_logging_arguments, setup_logging, verbosity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gristmill.trainer.job",
        description="Pretrain on token shards with Ray Train: the run of `gristmill pretrain` (see its --help), "
        "as an entry point for `ray job submit`.",
        epilog="example: ray job submit --address http://HEAD:8265 --working-dir . -- "
        "python -m gristmill.trainer.job --config configs/pretrain-124M.yaml",
    )
    add_config_arguments(parser, "model: and pretrain: sections, e.g. configs/pretrain-124M.yaml")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(verbosity(args))

    def run() -> int:
        from gristmill.trainer.launch import print_summary, run_training

        cfg = load_config(args.config, args.set)
        progress = sys.stderr.isatty() and not args.no_progress and not args.quiet
        print_summary("pretrain", run_training(cfg, "pretrain", progress=progress))
        return 0

    return run_command("pretrain", run)


if __name__ == "__main__":
    sys.exit(main())
