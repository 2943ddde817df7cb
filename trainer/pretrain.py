"""``python -m gristmill.trainer.pretrain --config FILE``: the entry point ``ray job submit`` runs.

The same run as ``gristmill pretrain`` (see its ``--help``). Under ``ray job submit`` Ray sets
RAY_ADDRESS and the run joins that cluster; otherwise Ray starts in this process. Paths in the
config should be absolute (or relative to where the job runs) and reachable from every node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from gristmill.config import add_config_arguments, load_config
from gristmill.errors import run_command
from gristmill.log import add_logging_arguments, setup_logging, verbosity


def print_summary(task: str, result) -> None:
    """What a finished training run printed: its last metrics, the loss curve's ends, where things are.
    Under torchrun (Ray Train's local mode in several processes) rank 0 prints for all."""
    if os.environ.get("RANK", "0") != "0":
        return
    m = result.metrics
    loss = f", loss {m['loss']:.4f}" if "loss" in m else ""
    val = f", val loss {m['val_loss']:.4f}" if "val_loss" in m else ""
    ppl = f" (perplexity {m['val_ppl']:.2f})" if "val_ppl" in m else ""
    # an MLM run's accuracy is over its masked tokens, a classifier's over its examples
    acc = f", val accuracy {m['val_accuracy']:.3f}" if "val_accuracy" in m else ""
    print(f"{task}: step {m.get('step', '?')}{loss}{val}{ppl}{acc} in {result.seconds:.0f} s")
    print(f"final:      {json.dumps(m)}")
    metrics_path = result.run_dir / "metrics.jsonl"
    curve = [json.loads(x) for x in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    curve = [r for r in curve if "loss" in r]
    if len(curve) >= 2:
        first, last = curve[0], curve[-1]
        print(f"loss:       {first['loss']:.3f} at step {first['step']} → {last['loss']:.3f} at step {last['step']}")
    print(f"metrics:    {metrics_path} (TensorBoard: {result.run_dir / 'tensorboard'})")
    print(f"checkpoint: {result.checkpoint}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gristmill.trainer.pretrain",
        description="Pretrain on token shards with Ray Train: the run of `gristmill pretrain` (see its --help), "
        "as an entry point for `ray job submit`.",
        epilog="example: ray job submit --address http://HEAD:8265 --working-dir . -- "
        "python -m gristmill.trainer.pretrain --config configs/pretrain-124M.yaml",
    )
    add_config_arguments(parser, "model: and pretrain: sections, e.g. configs/pretrain-124M.yaml")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(verbosity(args))

    def run() -> int:
        from gristmill.trainer.launch import run_training

        cfg = load_config(args.config, args.set)
        progress = sys.stderr.isatty() and not args.no_progress and not args.quiet
        print_summary("pretrain", run_training(cfg, "pretrain", progress=progress))
        return 0

    return run_command("pretrain", run)


if __name__ == "__main__":
    sys.exit(main())
