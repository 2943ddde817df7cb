"""Overhead of the Ray Train loop against a bare single-process PyTorch loop (same model, data, batch).

    python bench/bench_trainer_overhead.py --data runs/demo/tokens [--steps 60] [--preset small]

Three runs on the same token shards, each with the same torch thread count:
  bare   — a plain loop written here: GPT, AdamW, clipping, the same batches (trainer/data.py order);
  local  — gristmill's loop in Ray Train local mode (num_workers=0: in this process, no Ray actors);
  ray    — gristmill's loop in one Ray Train worker (num_workers=1) with the same number of CPUs.
Steady-state tokens/s is taken from steps after the first --skip (warm-up, allocator, first checkpoint);
start-up (Ray, worker group) is reported separately. Prints ratios; writes bench/results/trainer_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def bare_loop(data: str, preset: str, steps: int, batch: int, threads: int) -> list[float]:
    """Seconds per optimizer step of the plainest loop that does the same work."""
    import torch

    from gristmill.config import ModelConfig, PretrainConfig
    from gristmill.tokenizer.tokens import TokenSplit, read_token_manifest
    from gristmill.trainer.data import SampleStream
    from gristmill.trainer.model import GPT, lm_loss, resolve_model_args
    from gristmill.trainer.optim import lr_at

    torch.set_num_threads(threads)
    m = read_token_manifest(data)
    train = TokenSplit(data, "train", m)
    args = resolve_model_args(ModelConfig(preset=preset), m["vocab_size"], m["seq_len"])
    torch.manual_seed(0)
    model = GPT(args)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95))
    p = PretrainConfig(max_steps=steps, batch_size=batch, micro_batch_size=batch)
    stream = SampleStream(len(train), 0)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, p)
        x = torch.from_numpy(train.rows(stream.indices(step * batch, batch)))
        loss = lm_loss(model(x[:, :-1]), x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t0)
    return times


def gristmill_run(data: str, preset: str, steps: int, batch: int, threads: int, workers: int,
                  root: Path) -> tuple[list[dict], float]:
    cfg = {"model": {"preset": preset},
           "pretrain": {"data": data, "storage_path": str(root), "name": f"w{workers}", "num_workers": workers,
                        "cpus_per_worker": threads, "batch_size": batch, "micro_batch_size": batch, "max_steps": steps,
                        "log_every": 5, "eval_every": 10**6, "checkpoint_every": 10**6, "tensorboard": False,
                        "optimizer": "adamw"}}  # the bare loop's optimizer: the loop's overhead is what is measured
    path = root / f"w{workers}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {"OMP_NUM_THREADS": str(threads), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    t0 = time.time()
    r = subprocess.run([str(Path(sys.executable).parent / "gristmill"), "pretrain", "--config", str(path), "-q"],
                       capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    recs = [json.loads(x) for x in (root / f"w{workers}" / "metrics.jsonl").read_text().splitlines()]
    return [x for x in recs if "loss" in x], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "runs" / "demo" / "tokens"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    data = str(Path(a.data).resolve())
    seq_len = json.loads((Path(data) / "manifest.json").read_text())["seq_len"]
    tokens_per_step = a.batch * seq_len

    results = {}
    times = bare_loop(data, a.preset, a.steps, a.batch, a.threads)
    results["bare"] = {"tokens_per_s": tokens_per_step / statistics.median(times[a.skip:]), "wall_s": sum(times)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers in (("local", 0), ("ray", 1)):
            recs, wall = gristmill_run(data, a.preset, a.steps, a.batch, a.threads, workers, Path(tmp))
            # each record covers 5 steps (log_every=5): the median of the steady windows
            steady = [r["tokens_per_s"] for r in recs if r["step"] > a.skip]
            results[name] = {"tokens_per_s": statistics.median(steady), "wall_s": wall}
    base = results["bare"]["tokens_per_s"]
    print(f"{a.preset} model, {a.batch}×{seq_len} tokens per step, {a.threads} threads, "
          f"median of steps {a.skip + 1}..{a.steps}")
    print(f"{'loop':8} {'tokens/s':>10} {'vs bare':>8} {'overhead':>9} {'wall s (incl. start-up)':>24}")
    for name, r in results.items():
        ratio = r["tokens_per_s"] / base
        print(f"{name:8} {r['tokens_per_s']:10.0f} {ratio:8.3f} {100 * (1 - ratio):8.1f}% {r['wall_s']:24.1f}")
    out = REPO / "bench" / "results" / "trainer_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"preset": a.preset, "batch": a.batch, "seq_len": seq_len, "threads": a.threads,
                               "steps": a.steps, "skip": a.skip, "results": results}, indent=1))


if __name__ == "__main__":
    main()
