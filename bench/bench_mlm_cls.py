"""Causal LM vs MLM encoder as the start of classification (issue 17): the same model size and pretraining
tokens, then `gristmill finetune-cls` with configs/cls-lid.yaml's data and loop settings.

    python bench/bench_mlm_cls.py --tokens TOKENS --out bench/work/mlm_cls [--steps 300] [--preset small]

TOKENS: a token directory (`gristmill tokenize`) whose tokenizer reserves <mask> (any tokenizer trained by
this version). Writes OUT/results.json: per objective the pretraining loss curve's ends, the last validation
metrics, and the classifier's validation accuracy and macro-F1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
GRISTMILL = str(Path(sys.executable).parent / "gristmill")


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _run(*args: str) -> None:
    r = subprocess.run([GRISTMILL, *args], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"gristmill {' '.join(args)} failed:\n{(r.stdout + r.stderr)[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out", default="bench/work/mlm_cls")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cls-steps", type=int, default=None, help="default: configs/cls-lid.yaml's max_steps")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lid = yaml.safe_load((REPO / "configs" / "cls-lid.yaml").read_text())["finetune_cls"]
    lid["files"] = [str((REPO / f).resolve()) for f in lid["files"]]
    if a.cls_steps:
        lid["max_steps"] = a.cls_steps
        lid["eval_every"] = lid["checkpoint_every"] = a.cls_steps
    results = {"tokens": str(a.tokens), "preset": a.preset, "pretrain_steps": a.steps, "batch_size": a.batch_size}
    for objective in ("clm", "mlm"):
        pre = {"model": {"preset": a.preset, "objective": objective}, "pretrain": {
            "data": str(Path(a.tokens).resolve()), "storage_path": str(out / "pretrain"), "name": objective,
            "num_workers": 0, "batch_size": a.batch_size, "micro_batch_size": a.batch_size, "max_steps": a.steps,
            "warmup_steps": a.steps // 10, "lr": 3e-3, "min_lr": 3e-4, "log_every": 10, "eval_every": a.steps,
            "checkpoint_every": a.steps, "tensorboard": False}}
        (out / f"pretrain-{objective}.yaml").write_text(yaml.safe_dump(pre))
        _run("pretrain", "--config", str(out / f"pretrain-{objective}.yaml"))
        run = out / "pretrain" / objective
        curve = [r for r in _records(run) if "loss" in r]
        val = [r for r in _records(run) if "val_loss" in r][-1]
        cls = {**lid, "init_checkpoint": str(run / f"checkpoint_{a.steps:08d}"), "storage_path": str(out / "cls"),
               "name": objective, "num_workers": 0, "tensorboard": False}
        (out / f"cls-{objective}.yaml").write_text(yaml.safe_dump({"finetune_cls": cls}))
        _run("finetune-cls", "--config", str(out / f"cls-{objective}.yaml"))
        final = [r for r in _records(out / "cls" / objective) if "val_accuracy" in r][-1]
        results[objective] = {
            "pretrain_loss_first": curve[0]["loss"], "pretrain_loss_last": curve[-1]["loss"],
            "tokens_seen": curve[-1]["tokens_seen"], "val": {k: v for k, v in val.items() if k.startswith("val")},
            "cls_val_accuracy": final["val_accuracy"], "cls_val_macro_f1": final["val_macro_f1"],
            "cls_val_examples": final["val_examples"]}
        print(objective, json.dumps(results[objective]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
