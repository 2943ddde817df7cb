"""``python -m trainer.pretrain --config FILE``: the entry point ``ray job submit`` runs on a cluster.

Same as ``gristmill pretrain``. Under ``ray job submit`` Ray sets RAY_ADDRESS and the run joins that
cluster; otherwise Ray starts in this process. Paths in the config should be absolute (or relative to
where the job runs) and reachable from every node.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config with model: and pretrain: sections (configs/pretrain-demo.yaml)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config key, e.g. --set pretrain.max_steps=500 --set model.preset=124M (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def run(args) -> int:
    from pipelines.config import load_config
    from trainer.loop import run_pretrain

    cfg = load_config(args.config, args.set)
    progress = sys.stderr.isatty() and not args.no_progress and not getattr(args, "quiet", False)
    result = run_pretrain(cfg, progress=progress)
    m = result.metrics
    loss = f"loss {m['loss']:.4f}" if "loss" in m else ""
    val = f", val loss {m['val_loss']:.4f} (perplexity {m['val_ppl']:.2f})" if "val_loss" in m else ""
    print(f"pretrain: step {m.get('step', '?')}, {loss}{val} in {result.seconds:.0f} s")
    curve = [r for r in _read_metrics(result.run_dir) if "loss" in r]
    if len(curve) >= 2:
        print(f"loss:       {curve[0]['loss']:.3f} at step {curve[0]['step']} → {curve[-1]['loss']:.3f} at step {curve[-1]['step']}")
    print(f"metrics:    {result.run_dir / 'metrics.jsonl'} (TensorBoard: {result.run_dir / 'tensorboard'})")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _read_metrics(run_dir) -> list[dict]:
    import json

    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


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
