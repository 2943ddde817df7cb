"""gristmill's GPT against nanoGPT's, one training step at the same shape, side by side in one run.

Both models get the same loop (forward + backward over ``--accum`` micro-batches, gradient clipping
at 1.0, AdamW — fused on CUDA —, one ``float(loss)`` per step as both training loops do), the same
random tokens, the same dtype and the same ``torch.compile`` setting. Variants run alternately for
``--rounds`` rounds; each variant's tokens/s is the median over rounds, and the ratios are to nanoGPT.

gristmill variants:
  gristmill        the step as trainer/loop.py runs it: the model compiled, the loss outside it
  gristmill-fused  the model and its loss compiled as one function (no fp32 copy of the logits)

nanoGPT's model is loaded by path (``--nanogpt``, default ../shared/ref/nanogpt_model.py), never copied.

Examples:
  # issue 13's CPU shape, fp32, 1 and 2 threads
  python bench/bench_model_step.py --threads 1 --rounds 5
  python bench/bench_model_step.py --threads 2 --rounds 5
  # the 124M preset on a GPU, bf16, compiled
  python bench/bench_model_step.py --device cuda --shape 124M --dtype bf16 --compile --micro-batch 12 --accum 8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# name → (n_layer, n_head, d_model, seq_len, vocab)
SHAPES = {
    "cpu-small": (6, 6, 384, 256, 8000),  # issue 13's CPU comparison (~13.7M parameters)
    "124M": (12, 12, 768, 1024, 50304),  # GPT-2 small, nanoGPT's train.py default shape
}
# dense bf16 data-sheet peaks (SXM), as trainer/loop.py's table
GPU_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def flops_per_token(n_layer: int, d_model: int, seq: int, vocab: int, mlp_params_per_layer: int) -> float:
    """PaLM's training FLOPs per token: 6 × matmul parameters + 12 × n_layer × d_model × seq."""
    matmul = n_layer * (4 * d_model * d_model + mlp_params_per_layer) + d_model * vocab
    return 6.0 * matmul + 12.0 * n_layer * d_model * seq


class Variant:
    def __init__(self, name: str, model, opt, loss_fn, fpt: float, n_params: int):
        self.name, self.model, self.opt, self.loss_fn = name, model, opt, loss_fn
        self.fpt, self.n_params = fpt, n_params
        self.tokens_per_s: list[float] = []


def build_variants(args, device, autocast) -> list[Variant]:
    n_layer, n_head, d_model, seq, vocab = SHAPES[args.shape]
    variants = []
    compile_ = (lambda f: torch.compile(f, mode=args.compile_mode)) if args.compile else (lambda f: f)
    want = args.variants.split(",")

    if "nanogpt" in want:
        nano = load_module("nanogpt_model", Path(args.nanogpt))
        torch.manual_seed(0)
        cfg = nano.GPTConfig(block_size=seq, vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_embd=d_model,
                             dropout=0.0, bias=False)
        m = nano.GPT(cfg).to(device)
        opt = m.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
        compiled = compile_(m)

        def nano_loss(x, y, compiled=compiled):
            with autocast:
                return compiled(x, y)[1]

        fpt = flops_per_token(n_layer, d_model, seq, vocab, 8 * d_model * d_model)
        variants.append(Variant("nanogpt", m, opt, nano_loss, fpt, sum(p.numel() for p in m.parameters())))

    gm = load_module("gristmill_model", ROOT / "trainer" / "model.py")
    for name in ("gristmill", "gristmill-fused"):
        if name not in want:
            continue
        torch.manual_seed(0)
        ffn = 64 * math.ceil(8 * d_model / 3 / 64)
        margs = gm.ModelArgs(vocab_size=vocab, padded_vocab_size=64 * math.ceil(vocab / 64), n_layer=n_layer,
                             n_head=n_head, n_kv_head=n_head, d_model=d_model, ffn_hidden=ffn, max_seq_len=seq)
        m = gm.GPT(margs).to(device)
        decay = [q for q in m.parameters() if q.dim() >= 2]
        no_decay = [q for q in m.parameters() if q.dim() < 2]
        extra = {"fused": True} if device.type == "cuda" else {}
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=6e-4, betas=(0.9, 0.95), eps=1e-8, **extra)
        if name == "gristmill":
            compiled = compile_(m)

            def gm_loss(x, y, compiled=compiled):
                with autocast:
                    return gm.lm_loss(compiled(x), y)
        else:
            fused = compile_(lambda x, y, m=m: gm.lm_loss(m(x), y))

            def gm_loss(x, y, fused=fused):
                with autocast:
                    return fused(x, y)

        variants.append(Variant(name, m, opt, gm_loss, gm.flops_per_token(margs, seq),
                                sum(p.numel() for p in m.parameters())))
    return variants


def step(v: Variant, batches) -> float:
    loss_sum = 0.0
    for x, y in batches:
        loss = v.loss_fn(x, y)
        (loss / len(batches)).backward()
        loss_sum = loss_sum + loss.detach()
    torch.nn.utils.clip_grad_norm_(v.model.parameters(), 1.0)
    v.opt.step()
    v.opt.zero_grad(set_to_none=True)
    return float(loss_sum / len(batches))  # both loops read the loss every step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype) -> float:
    """What one large matmul reaches here: the achievable ceiling next to the data sheet's."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="cpu-small", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's)")
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before a variant's first round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    ap.add_argument("--variants", default="nanogpt,gristmill,gristmill-fused")
    ap.add_argument("--nanogpt", default=str(ROOT.parent / "shared" / "ref" / "nanogpt_model.py"))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as nanoGPT's train.py
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else torch.autocast(
        device.type, enabled=False)
    n_layer, n_head, d_model, seq, vocab = SHAPES[args.shape]
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, vocab - 100, (args.accum, args.micro_batch, seq + 1), generator=g).to(device)
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]  # as train.py's get_batch
    tokens_per_step = args.accum * args.micro_batch * seq

    variants = build_variants(args, device, autocast)
    peak_measured = matmul_peak(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak_sheet = next((v for k, v in GPU_PEAK.items() if k in name), float("nan"))
    print(f"device {name}  torch {torch.__version__}  threads {torch.get_num_threads()}  dtype {args.dtype}  "
          f"compile {args.compile}  shape {args.shape} (L{n_layer} H{n_head} d{d_model} T{seq} V{vocab})  "
          f"micro-batch {args.micro_batch} x accum {args.accum} = {tokens_per_step} tokens/step")
    print(f"matmul peak measured {peak_measured / 1e12:.1f} TFLOP/s; data sheet "
          f"{peak_sheet / 1e12:.0f} TFLOP/s" if peak_sheet == peak_sheet else
          f"matmul peak measured {peak_measured / 1e12:.3f} TFLOP/s")

    for v in variants:
        t = time.perf_counter()
        for _ in range(args.warmup):
            loss = step(v, batches)
        sync(device)
        print(f"  {v.name}: {v.n_params / 1e6:.1f}M parameters, warm-up (compile) {time.perf_counter() - t:.1f} s, "
              f"loss {loss:.3f}", flush=True)
    for r in range(args.rounds):
        for v in variants:
            sync(device)
            t = time.perf_counter()
            for _ in range(args.steps):
                step(v, batches)
            sync(device)
            v.tokens_per_s.append(tokens_per_step * args.steps / (time.perf_counter() - t))
        print(f"round {r + 1}: " + "  ".join(f"{v.name} {v.tokens_per_s[-1]:,.0f} tok/s" for v in variants),
              flush=True)

    base = next((v for v in variants if v.name == "nanogpt"), None)
    base_tps = statistics.median(base.tokens_per_s) if base else float("nan")
    rows = []
    print(f"\n{'variant':<17}{'tok/s (median)':>16}{'ratio':>8}{'MFU sheet':>11}{'MFU measured':>14}")
    for v in variants:
        tps = statistics.median(v.tokens_per_s)
        row = {"variant": v.name, "tokens_per_s": round(tps, 1), "runs": [round(x, 1) for x in v.tokens_per_s],
               "ratio_to_nanogpt": round(tps / base_tps, 3) if base else None,
               "mfu_data_sheet": round(v.fpt * tps / peak_sheet, 4) if peak_sheet == peak_sheet else None,
               "mfu_measured_peak": round(v.fpt * tps / peak_measured, 4), "flops_per_token": v.fpt}
        rows.append(row)
        sheet = f"{row['mfu_data_sheet'] * 100:.1f}%" if row["mfu_data_sheet"] is not None else "n/a"
        print(f"{v.name:<17}{tps:>16,.0f}{row['ratio_to_nanogpt'] or float('nan'):>8.3f}{sheet:>11}"
              f"{row['mfu_measured_peak'] * 100:>13.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": name, "torch": torch.__version__,
                                               "threads": torch.get_num_threads(),
                                               "matmul_peak_measured": peak_measured, "peak_data_sheet": peak_sheet,
                                               "results": rows}, indent=1))


if __name__ == "__main__":
    main()
