"""Tokens to a target loss: nanoGPT's recipe against gristmill with AdamW, with Muon and with the speedrun options.

    .venv/bin/python bench/bench_speedrun.py                         # the issue's size (~14M parameters), 3 seeds
    .venv/bin/python bench/bench_speedrun.py --shape small --steps 300 --seeds 0,1,2

Data: the books and speeches of ../shared/data/text (bench/prepare_books.py) and the bundled sample crawl, through
gristmill's own corpus job (configs/books.yaml: English, its cleaning), one 8k tokenizer and 256-token rows; built
once under --work and reused (or give --tokens DIR). Every variant sees the same batches for a seed (gristmill's
SampleStream over the train rows), the same validation rows, the same number of steps and the same warmup + cosine
schedule shape, and trains in this process, one after another, with --threads torch threads.

Variants (all the same shape: n_layer × d_model, heads, vocabulary, context):

- ``nanogpt``: ../shared/ref/nanogpt_model.py loaded by path (GPT-2 blocks: LayerNorm, GELU MLP, learned positions,
  tied embeddings), its own ``configure_optimizers`` (AdamW, weight decay 0.1 on matrices) with the hyperparameters
  nanoGPT publishes for models of this size (config/train_shakespeare_char.py: lr 1e-3 → 1e-4, betas 0.9/0.99,
  clip 1.0). The baseline: its final validation loss is each seed's target.
- ``adamw``: gristmill's model (Llama blocks) with AdamW, lr 3e-3 → 3e-4, betas 0.9/0.95, weight decay 0.1, clip
  1.0, built by trainer/model.py and trainer/optim.py as `gristmill pretrain` does: gristmill's default until this
  benchmark.
- ``muon``: the same with Muon for the blocks' matrices (``muon_lr`` 0.02) and AdamW for the rest: gristmill's
  default since this benchmark measured it.
- ``speedrun``: Muon and the model options (configs/speedrun.yaml: QK-norm, relu², logit soft-cap, document mask,
  untied embeddings).
- ``options``: the model options with AdamW; ``gristmill``: gristmill at whatever its defaults are (--variants
  adds them).

Per variant and seed: validation loss every --eval-every steps; tokens (and training seconds, validation excluded)
at which it first reaches the seed's target, interpolated between evaluations; ``tokens_to_target_ratio`` = those
tokens ÷ the baseline's tokens. The final validation losses are compared paired by seed, Holm-corrected
(:func:`verdicts`). Prints a table and the verdicts, writes JSON (--output) and the curves (--plot);
``--summarise JSON`` recomputes the summary of a written result.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

# name → (n_layer, n_head, d_model): "issue" is the 10–20M parameters (with the 8k vocabulary);
# "small" the demo's preset (3.3M), for a run that fits a short session on 2 cores; "124M" GPT-2 small's shape
# (a GPU: --device cuda --seq-len 1024 --compile)
SHAPES = {"issue": (6, 6, 384), "small": (4, 4, 192), "tiny": (2, 4, 64), "124M": (12, 12, 768)}

# the speedrun preset (configs/speedrun.yaml) as config overrides
SPEEDRUN_MODEL = {"qk_norm": True, "mlp": "relu2", "logit_softcap": 15.0, "document_mask": True,
                  "tie_embeddings": False}
SPEEDRUN_OPT = {"optimizer": "muon", "muon_lr": 0.02}


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_tokens(work: Path, seq_len: int = 256) -> Path:
    """The books + the sample crawl → corpus → 8k tokenizer → rows of seq_len tokens, with gristmill's public API."""
    from gristmill import api
    from gristmill.config import load_config

    tokens = work / ("tokens" if seq_len == 256 else f"tokens-{seq_len}")
    if (tokens / "manifest.json").is_file():
        return tokens
    prepare = load_module("prepare_books", ROOT / "bench" / "prepare_books.py")
    books = work / "books.jsonl"
    if not books.is_file():
        prepare.main(["--output", str(books)])
    cfg = load_config(ROOT / "configs" / "books.yaml", [f"tokenize.seq_len={seq_len}"])
    inputs = [str(books), *sorted(str(p) for p in (ROOT / "sample" / "crawl").iterdir())]
    if not (work / "corpus" / "manifest.json").is_file():
        api.run_corpus(inputs, str(work / "corpus"), cfg, progress=False, overwrite=True)
    if not (work / "tokenizer" / "tokenizer.model").is_file():
        api.train_tokenizer(str(work / "corpus"), str(work / "tokenizer"), cfg, progress=False, overwrite=True)
    api.tokenize(str(work / "corpus"), str(work / "tokenizer"), str(tokens), cfg, overwrite=True)
    return tokens


class Data:
    """Train rows drawn by gristmill's SampleStream (the same batches for every variant of a seed), fixed val rows."""

    def __init__(self, tokens: Path, val_rows: int, device: torch.device):
        from gristmill.tokenizer.tokens import TokenSplit, read_token_manifest

        self.manifest = read_token_manifest(str(tokens))
        self.train = TokenSplit(str(tokens), "train", self.manifest)
        val = TokenSplit(str(tokens), "val", self.manifest)
        n = min(len(val), val_rows) if val_rows else len(val)
        self.device = device
        self.val = torch.from_numpy(val.rows(np.arange(n)).astype(np.int64)).to(device)
        self.seq_len = int(self.manifest["seq_len"])
        self.vocab = int(self.manifest["vocab_size"])
        self.eos = int(self.manifest["special_tokens"]["eos"])

    def batches(self, seed: int, batch: int):
        from gristmill.trainer.data import SampleStream

        stream, start = SampleStream(len(self.train), seed), 0
        while True:
            rows = torch.from_numpy(self.train.rows(stream.indices(start, batch)).astype(np.int64)).to(self.device)
            start += batch
            yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


class Variant:
    """A model, its optimizer, its schedule, its training loss ``loss(x, y)`` (as its own loop computes it) and
    ``logits(x, y)`` over the (padded) vocabulary at every position."""

    def __init__(self, name, model, opt, lr_at, loss, logits, clip=1.0, flops_per_token=float("nan")):
        self.name, self.model, self.opt, self.lr_at, self.loss, self.logits = name, model, opt, lr_at, loss, logits
        self.clip, self.flops_per_token = clip, flops_per_token

    def step(self, x, y, step: int) -> float:
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step) * g.get("lr_scale", 1.0)
        loss = self.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def val_loss(self, val: torch.Tensor, micro: int) -> float:
        self.model.eval()
        total, n = 0.0, 0
        for i in range(0, len(val), micro):
            rows = val[i:i + micro]
            logits = self.logits(rows[:, :-1].contiguous(), rows[:, 1:].contiguous())
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1),
                                           reduction="sum"))
            n += rows[:, 1:].numel()
        self.model.train()
        return total / n


def cosine(lr: float, min_lr: float, warmup: int, steps: int):
    def at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)
    return at


def make_nanogpt(args, data: Data, seed: int) -> Variant:
    nano = load_module("nanogpt_model", Path(args.nanogpt))
    n_layer, n_head, d_model = SHAPES[args.shape]
    torch.manual_seed(seed)
    cfg = nano.GPTConfig(block_size=data.seq_len, vocab_size=64 * math.ceil(data.vocab / 64), n_layer=n_layer,
                         n_head=n_head, n_embd=d_model, dropout=0.0, bias=False)
    model = nano.GPT(cfg).to(args.device)
    # nanoGPT's recipe for a model of this size (config/train_shakespeare_char.py), its optimizer construction
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), args.device.type)
    fwd = torch.compile(model) if args.compile else model

    def loss(x, y):
        with args.autocast:
            return fwd(x, y)[1]

    def logits(x, y):  # without targets nanoGPT gives the last position's logits only
        with args.autocast:
            return fwd(x, y)[0].float()

    # PaLM's FLOPs per token (as trainer/model.py counts them): attention 4·d², GELU MLP 8·d², tied head
    fpt = 6.0 * (n_layer * 12 * d_model * d_model + d_model * cfg.vocab_size) + 12.0 * n_layer * d_model * data.seq_len
    return Variant("nanogpt", model, opt, cosine(1e-3, 1e-4, args.warmup, args.steps), loss, logits,
                   flops_per_token=fpt)


def make_gristmill(name: str, args, data: Data, seed: int, model_over: dict, opt_over: dict) -> Variant:
    from gristmill.config import GristmillConfig
    from gristmill.trainer.model import build_model, flops_per_token, lm_loss, resolve_model_args
    from gristmill.trainer.optim import build_optimizer, lr_at

    n_layer, n_head, d_model = SHAPES[args.shape]
    cfg = GristmillConfig.model_validate({
        "model": {"preset": None, "n_layer": n_layer, "n_head": n_head, "d_model": d_model, **model_over},
        "pretrain": {"max_steps": args.steps, "warmup_steps": args.warmup, "seed": seed, **opt_over}})
    margs = resolve_model_args(cfg.model, data.vocab, data.seq_len)
    if margs.document_mask:
        import dataclasses
        margs = dataclasses.replace(margs, eos_id=data.eos)
    torch.manual_seed(seed)
    model = build_model(margs).to(args.device)
    opt = build_optimizer(model, cfg.pretrain, args.device)
    fwd = torch.compile(model) if args.compile else model
    p = cfg.pretrain

    def loss(x, y):
        with args.autocast:
            return lm_loss(fwd(x), y)

    def logits(x, y):
        with args.autocast:
            return fwd(x).float()

    return Variant(name, model, opt, lambda step: lr_at(step, p), loss, logits, clip=p.grad_clip,
                   flops_per_token=flops_per_token(margs, data.seq_len))


def make(name: str, args, data: Data, seed: int) -> Variant:
    if name == "nanogpt":
        return make_nanogpt(args, data, seed)
    model_over, opt_over = {
        "gristmill": ({}, {}),  # whatever gristmill's defaults are at the time
        "adamw": ({}, {"optimizer": "adamw"}),
        "muon": ({}, SPEEDRUN_OPT),
        "speedrun": (SPEEDRUN_MODEL, SPEEDRUN_OPT),
        "options": (SPEEDRUN_MODEL, {"optimizer": "adamw"}),
    }[name]
    return make_gristmill(name, args, data, seed, model_over, opt_over)


def train(v: Variant, data: Data, seed: int, args) -> dict:
    """Steps with validation every eval_every steps; seconds count training only."""
    curve, seconds = [(0, v.val_loss(data.val, args.batch), 0.0)], 0.0
    tokens_per_step = args.batch * data.seq_len
    losses = []
    for step, (x, y) in zip(range(args.steps), data.batches(seed, args.batch)):
        t = time.perf_counter()
        losses.append(v.step(x, y, step))  # float(loss): the device has finished the step
        seconds += time.perf_counter() - t
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            curve.append(((step + 1) * tokens_per_step, v.val_loss(data.val, args.batch), seconds))
            print(f"  {v.name:<9} seed {seed} step {step + 1:>5}  train {statistics.fmean(losses[-10:]):.4f}  "
                  f"val {curve[-1][1]:.4f}  {seconds:7.1f} s", flush=True)
    tokens_per_s = args.steps * tokens_per_step / seconds
    mfu = v.flops_per_token * tokens_per_s / args.peak if args.peak == args.peak else None
    return {"curve": curve, "params": sum(p.numel() for p in v.model.parameters()), "tokens_per_s": tokens_per_s,
            "mfu": mfu}


def first_reach(curve: list, target: float) -> tuple[float | None, float | None]:
    """(tokens, seconds) where the validation loss first reaches ``target``, linear between evaluations."""
    for (t0, l0, s0), (t1, l1, s1) in zip(curve, curve[1:]):
        if l1 <= target:
            f = 1.0 if l0 == l1 else (l0 - target) / (l0 - l1)
            f = min(1.0, max(0.0, f))
            return t0 + f * (t1 - t0), s0 + f * (s1 - s0)
    return None, None


def summarise(runs: dict, variants: list[str], baseline: str) -> dict:
    out = {}
    seeds = sorted(runs[baseline])
    for name in variants:
        ratios, seconds, finals = [], [], []
        for seed in seeds:
            base = runs[baseline][seed]["curve"]
            target, base_tokens, base_seconds = base[-1][1], base[-1][0], base[-1][2]
            tokens, secs = first_reach(runs[name][seed]["curve"], target)
            ratios.append(tokens / base_tokens if tokens is not None else None)
            seconds.append(secs / base_seconds if secs is not None else None)
            finals.append(runs[name][seed]["curve"][-1][1])
        reached = [r for r in ratios if r is not None]
        out[name] = {
            "tokens_to_target_ratio": round(statistics.fmean(reached), 4) if len(reached) == len(ratios) else None,
            "tokens_to_target_ratio_per_seed": [round(r, 4) if r is not None else None for r in ratios],
            "tokens_to_target_ratio_interval": ratio_interval(ratios),
            "seconds_to_target_ratio": (round(statistics.fmean(seconds), 4) if None not in seconds else None),
            "seconds_to_target_ratio_per_seed": [round(s, 4) if s is not None else None for s in seconds],
            "final_val_loss_mean": round(statistics.fmean(finals), 4),
            "final_val_loss_per_seed": [round(f, 4) for f in finals],
            "parameters": runs[name][seeds[0]]["params"],
            "tokens_per_s": round(statistics.fmean(runs[name][s]["tokens_per_s"] for s in seeds), 1),
            "mfu": (round(statistics.fmean(runs[name][s]["mfu"] for s in seeds), 4)
                    if runs[name][seeds[0]]["mfu"] is not None else None),
        }
    return out


def verdicts(runs: dict, variants: list[str], baseline: str) -> dict:
    """The final validation loss paired by seed: each variant against ``baseline``; each of gristmill's other
    variants against gristmill with AdamW (the comparison that decides the default optimizer); the speedrun
    against Muon alone (what the model options add). Student's t-interval of the per-seed differences,
    Holm-corrected within each family (trainer/ablation_stats.py, as `gristmill ablate` does); a verdict only
    where the corrected interval excludes zero."""
    from gristmill.trainer.ablation_stats import compare

    seeds = sorted(runs[baseline])
    finals = {n: {"final_val_loss": [runs[n][s]["curve"][-1][1] for s in seeds]} for n in variants}
    families = {baseline: variants}
    if "adamw" in variants and baseline != "adamw":  # AdamW was the default until this benchmark
        families["adamw"] = ["adamw", *(n for n in variants if n not in (baseline, "adamw"))]
    if "muon" in variants and "speedrun" in variants and baseline != "muon":  # what the model options add to Muon
        families["muon"] = ["muon", "speedrun"]
    out = {}
    for against, names in families.items():
        if len(names) < 2:
            continue
        for (name, _), c in compare({n: finals[n] for n in names}, against, {"final_val_loss": True}).items():
            out[f"{name} vs {against}"] = {"difference": round(c["difference"], 4),
                                           "interval": [round(float(x), 4) for x in c["interval"]],
                                           "confidence": round(c["confidence"], 4), "p_holm": c["p_holm"],
                                           "n_seeds": c["n_seeds"], "verdict": c["verdict"]}
    return out


def ratio_interval(per_seed: list, confidence: float = 0.95) -> list | None:
    """Student's t-interval of the mean tokens-to-target ratio over seeds (None unless every seed reached it)."""
    from gristmill.trainer.ablation_stats import paired

    if None in per_seed or len(per_seed) < 2:
        return None
    lo, hi = paired(per_seed, [0.0] * len(per_seed)).interval(confidence)
    return [round(float(lo), 4), round(float(hi), 4)]


def plot(runs: dict, variants: list[str], baseline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, name in enumerate(variants):
        colour = f"C{i}"
        for j, (_, r) in enumerate(sorted(runs[name].items())):
            t, loss = [c[0] / 1e6 for c in r["curve"][1:]], [c[1] for c in r["curve"][1:]]
            ax.plot(t, loss, color=colour, lw=1.2, alpha=0.8, label=name if j == 0 else None)
    targets = [r["curve"][-1][1] for r in runs[baseline].values()]
    ax.axhline(statistics.fmean(targets), color="grey", ls="--", lw=1, label=f"target ({baseline} final, mean)")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("validation loss (nats/token)")
    lo = min(c[1] for r in runs.values() for s in r.values() for c in s["curve"][1:])
    ax.set_ylim(lo - 0.1, statistics.fmean(targets) + 1.5)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_summary(summary: dict, verdict: dict) -> None:
    print(f"\n{'variant':<10}{'params':>11}{'final val':>11}{'tokens→target':>15}{'seconds→target':>16}"
          f"{'tokens/s':>10}   per seed")
    for name, s in summary.items():
        ratio, secs = (float("nan") if x is None else x for x in (s["tokens_to_target_ratio"],
                                                                   s["seconds_to_target_ratio"]))
        print(f"{name:<10}{s['parameters']:>11,}{s['final_val_loss_mean']:>11.4f}{ratio:>15.3f}{secs:>16.3f}"
              f"{s.get('tokens_per_s', float('nan')):>10,.0f}   {s['tokens_to_target_ratio_per_seed']}"
              f"  95% {s['tokens_to_target_ratio_interval']}")
    print("\nfinal validation loss, paired by seed (Holm-corrected within each comparison family):")
    for key, c in verdict.items():
        lo, hi = c["interval"]
        print(f"  {key:<24}{c['difference']:+.3f}  [{lo:+.3f}, {hi:+.3f}] at {c['confidence']:.3f}  {c['verdict']}")


def resummarise(path: Path) -> int:
    """The summary and verdicts of a result written by this script, recomputed from its curves."""
    result = json.loads(path.read_text())
    old = result["variants"]
    runs = {n: {int(seed): {"curve": curve, "params": old[n]["parameters"],
                            "tokens_per_s": old[n].get("tokens_per_s", float("nan")), "mfu": old[n].get("mfu")}
                for seed, curve in per_seed.items()} for n, per_seed in result["curves"].items()}
    variants = list(result["curves"])
    result["variants"] = summarise(runs, variants, result["baseline"])
    for name, summary in result["variants"].items():  # what the result did not hold stays out
        for key in ("tokens_per_s", "mfu"):
            if key not in old[name]:
                summary.pop(key)
    result["final_val_loss_verdicts"] = verdicts(runs, variants, result["baseline"])
    print_summary(result["variants"], result["final_val_loss_verdicts"])
    path.write_text(json.dumps(result, indent=1))
    plot(runs, variants, result["baseline"], path.with_suffix(".png"))
    print(f"\n{path}, {path.with_suffix('.png')}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: bench/bench_speedrun.py --shape small --steps 300 --seeds 0,1,2")
    ap.add_argument("--tokens", help="token shards (gristmill tokenize); default: built under --work")
    ap.add_argument("--work", default=str(ROOT / "bench" / "work" / "speedrun"))
    ap.add_argument("--shape", choices=sorted(SHAPES), default="issue")
    ap.add_argument("--variants", default="nanogpt,adamw,muon,speedrun",
                    help="comma-separated, the first is the baseline: nanogpt, adamw, muon, speedrun, options, "
                         "gristmill (at its defaults)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--val-rows", type=int, default=128, help="validation rows (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 autocast)")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model")
    ap.add_argument("--seq-len", type=int, default=256, help="rows of the token shards built under --work")
    ap.add_argument("--peak-tflops", type=float, help="for MFU; default: the GPU's data sheet (trainer/mfu.py)")
    ap.add_argument("--nanogpt", default=str(ROOT.parent / "shared" / "ref" / "nanogpt_model.py"))
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "speedrun.json"))
    ap.add_argument("--plot", default=str(ROOT / "bench" / "results" / "speedrun.png"))
    ap.add_argument("--summarise", metavar="JSON",
                    help="train nothing: recompute the summary, verdicts and plot (JSON's name .png) of a result this "
                         "script wrote, in place")
    args = ap.parse_args(argv)
    if args.summarise:
        return resummarise(Path(args.summarise))
    torch.set_num_threads(args.threads)
    args.device = torch.device(args.device)
    args.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.device.type == "cuda"
                     else contextlib.nullcontext())
    args.peak = args.peak_tflops * 1e12 if args.peak_tflops else float("nan")
    if args.device.type == "cuda":
        from gristmill.config import PretrainConfig
        from gristmill.trainer.mfu import peak_flops

        torch.backends.cuda.matmul.allow_tf32 = True
        if not args.peak_tflops:
            args.peak = peak_flops(args.device, PretrainConfig(), torch.bfloat16)[0]
    variants = args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    tokens = Path(args.tokens) if args.tokens else build_tokens(Path(args.work), args.seq_len)
    data = Data(tokens, args.val_rows, args.device)
    print(f"data {tokens}: {len(data.train):,} train rows of {data.seq_len} tokens, {len(data.val)} val rows; "
          f"shape {args.shape} {SHAPES[args.shape]}; {args.steps} steps × {args.batch * data.seq_len:,} tokens",
          flush=True)
    runs: dict = {name: {} for name in variants}
    started = time.time()
    for seed in seeds:  # variants interleaved per seed: a change of machine load falls on all of them alike
        for name in variants:
            runs[name][seed] = train(make(name, args, data, seed), data, seed, args)
    summary, verdict = summarise(runs, variants, variants[0]), verdicts(runs, variants, variants[0])
    print_summary(summary, verdict)
    result = {"baseline": variants[0], "shape": args.shape, "steps": args.steps, "batch": args.batch,
              "seq_len": data.seq_len, "warmup": args.warmup, "seeds": seeds, "threads": args.threads,
              "device": str(args.device), "compile": args.compile,
              "tokens": str(tokens), "train_rows": len(data.train), "val_rows": len(data.val),
              "speedrun_model": SPEEDRUN_MODEL, "speedrun_optimizer": SPEEDRUN_OPT, "variants": summary,
              "final_val_loss_verdicts": verdict,
              "curves": {n: {str(s): r["curve"] for s, r in v.items()} for n, v in runs.items()},
              "wall_s": round(time.time() - started, 1), "torch": torch.__version__}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    plot(runs, variants, variants[0], Path(args.plot))
    print(f"\n{args.output}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
