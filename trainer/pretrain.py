"""``python -m trainer.pretrain --config FILE``: the entry point ``ray job submit`` runs on a cluster.

Same as ``gristmill pretrain``. Under ``ray job submit`` Ray sets RAY_ADDRESS and the run joins that
cluster; otherwise Ray starts in this process. Paths in the config should be absolute (or relative to
where the job runs) and reachable from every node.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config with model: and pretrain: sections (configs/demo.yaml)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config key, e.g. --set pretrain.max_steps=500 --set model.preset=124M (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def run(args) -> int:
    from trainer.commands import _train

    return _train("pretrain", args)


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import error_exit
    from pipelines.log import setup_logging

    parser = argparse.ArgumentParser(prog="python -m trainer.pretrain", description=DESCRIPTION)
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    return error_exit("pretrain", lambda: run(args))


DESCRIPTION = (
    "Pretrain the decoder-only transformer (model: section) on token shards (pretrain.data, written by "
    "`gristmill tokenize`) with Ray Train: DDP or FSDP over pretrain.num_workers workers (0 = in this process), "
    "AdamW with warmup + cosine, gradient accumulation and clipping, validation loss and perplexity every "
    "pretrain.eval_every steps. Checkpoints (safetensors + optimizer/RNG/data position) go to "
    "STORAGE_PATH/NAME/checkpoint_NNNNNNNN; metrics to STORAGE_PATH/NAME/metrics.jsonl and tensorboard/. "
    "Running the same name and storage_path again resumes from the last checkpoint, and a failed worker group "
    "restarts from it (pretrain.max_failures). On a cluster: ray job submit --address http://HEAD:8265 "
    "--working-dir . -- python -m trainer.pretrain --config FILE"
)

if __name__ == "__main__":
    sys.exit(main())
