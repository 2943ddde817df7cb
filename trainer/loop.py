"""Pretraining: the per-worker loop (runs inside Ray Train workers) and the driver that launches it.

The loop is plain PyTorch: DDP (or FSDP2) over gloo/NCCL as set up by Ray Train, gradient
accumulation, AdamW, warmup + cosine schedule, gradient clipping, periodic validation. Ray Train
supplies what a cluster needs and nothing else: the worker group, the process group, checkpoint
persistence (``ray.train.report``), and restarts from the last checkpoint after a failure
(``FailureConfig``, ``ray.train.get_checkpoint``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipelines.config import GristmillConfig, LoopConfig, PretrainConfig
from trainer import TrainingDivergedError
from trainer import checkpoint as ckpt
from trainer.data import BatchPlan, DataError, SampleStream, TokenSplit, micro_batch_start, read_token_manifest, val_indices
from trainer.model import GPT, ModelArgs, flops_per_token, resolve_model_args

log = logging.getLogger("gristmill.trainer")

DIVERGED_FILE = "DIVERGED.json"
#: task → its config section (the loop settings and the task's data)
TASK_SECTIONS = {"pretrain": "pretrain", "sft": "sft", "cls": "finetune_cls"}

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (SXM parts).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12, "4090": 165e12}


def lr_at(step: int, p: PretrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    span = max(1, p.max_steps - p.warmup_steps)
    progress = min(1.0, (step - p.warmup_steps) / span)
    return p.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (p.lr - p.min_lr)


def peak_flops(device: torch.device, p: PretrainConfig, dtype: torch.dtype) -> tuple[float, str]:
    """Peak FLOP/s of one device for MFU, and where the number comes from."""
    if p.peak_tflops:
        return p.peak_tflops * 1e12, "config"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value, f"data sheet ({name}, bf16 dense)"
        return float("nan"), f"unknown GPU {name}: set pretrain.peak_tflops"
    # CPU: no data sheet; measure what a large matmul reaches with this worker's threads. The best of
    # five short windows: a run starts while Ray's own processes start too, and a single window
    # taken then read half the peak (MFU over 100% in the demo).
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(5):
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.1:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best, f"measured {dtype} matmul on {torch.get_num_threads()} CPU threads"


@dataclass
class _Env:
    rank: int
    world: int
    device: torch.device
    local_mode: bool
    run_dir: Path


def _setup_env(p: LoopConfig, local_mode: bool) -> _Env:
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if p.use_gpu and torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device() if not local_mode else torch.device("cuda", 0)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        if not local_mode:
            torch.set_num_threads(p.cpus_per_worker)
    run_dir = Path(p.storage_path) / p.name
    run_dir.mkdir(parents=True, exist_ok=True)
    return _Env(rank, world, device, local_mode, run_dir)


def _wrap(model: GPT, env: _Env, p: LoopConfig, bf16: bool):
    if not (dist.is_available() and dist.is_initialized()) or env.world == 1:
        return model
    if p.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        return fully_shard(model, mp_policy=mp)
    from torch.nn.parallel import DistributedDataParallel as DDP

    # a classifier never uses an untied output matrix: DDP must not wait for its gradient
    unused = model.cls_head is not None and not model.args.tie_embeddings
    return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None, find_unused_parameters=unused)


def _optimizer(model, p: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # no weight decay on norms (1-d); embeddings and matrices decay (nanoGPT's rule)
    decay = [q for q in model.parameters() if q.requires_grad and q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.requires_grad and q.dim() < 2]
    groups = [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=p.lr, betas=(p.beta1, p.beta2), eps=1e-8, **extra)


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _Metrics:
    """Rank 0's sinks: the log, metrics.jsonl and TensorBoard (both under the run directory)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        # a resumed run drops what the interrupted attempt logged after its checkpoint: the file reads as one run
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("step", 0) <= resume_step:
                    kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step" and v == v:
                    self.tb.add_scalar(f"train/{k}" if not k.startswith("val") else f"val/{k}", v, rec["step"])
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _progress(enabled: bool, local_mode: bool, total: int, initial: int):
    if not enabled:
        return None
    if local_mode:
        from tqdm import tqdm
    else:
        from ray.experimental.tqdm_ray import tqdm  # rendered by the driver
    return tqdm(total=total, initial=initial, desc="pretrain", unit="step")


class _LMTask:
    """Next-token loss on fixed-width rows: pretraining (token shards) and SFT (ids + assistant-only labels)."""

    def __init__(self, train, val, seq_len: int):
        self.train, self.val, self.seq_len = train, val, seq_len

    @staticmethod
    def batch(rows, device) -> dict:
        if isinstance(rows, np.ndarray):  # token shards: targets are the shifted ids
            t = torch.from_numpy(rows).to(device, non_blocking=True)
            return {"x": t[:, :-1], "y": t[:, 1:]}
        ids = torch.from_numpy(rows["ids"]).to(device, non_blocking=True)
        labels = torch.from_numpy(rows["labels"]).to(device, non_blocking=True)
        return {"x": ids[:, :-1], "y": labels[:, 1:]}

    def loss(self, model, b, autocast):
        with autocast:
            return model(b["x"], b["y"])[1]

    @torch.no_grad()
    def evaluate(self, model, env: _Env, p: LoopConfig, autocast) -> dict:
        """Mean validation loss per target token over the first val rows (all ranks together)."""
        total = torch.zeros(2, dtype=torch.float64, device=env.device)
        for idx, weights in _val_batches(len(self.val), env, p):
            b = self.batch(self.val.rows(idx), env.device)
            with autocast:
                logits = model(b["x"])
            per_token = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), b["y"], reduction="none", ignore_index=-100).double()
            counted = (b["y"] != -100).double()
            total[0] += (per_token.sum(dim=1) * weights).sum()
            total[1] += (counted.sum(dim=1) * weights).sum()
        _all_sum(total)
        loss = float(total[0] / total[1]) if total[1] > 0 else float("nan")
        return {"val_loss": loss, "val_ppl": math.exp(loss) if loss < 50 else float("inf"), "val_tokens": int(total[1])}


class _ClsTask:
    """Cross-entropy over classes from the last token's hidden state; accuracy and macro-F1 on validation."""

    def __init__(self, train, val, seq_len: int, classes: list[str]):
        self.train, self.val, self.seq_len, self.classes = train, val, seq_len, classes

    @staticmethod
    def batch(rows, device) -> dict:
        return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in rows.items()}

    def loss(self, model, b, autocast):
        with autocast:
            logits = model(b["ids"], classify_at=b["last"])
        return torch.nn.functional.cross_entropy(logits.float(), b["labels"])

    @torch.no_grad()
    def evaluate(self, model, env: _Env, p: LoopConfig, autocast) -> dict:
        from trainer.finetune_data import macro_f1

        n = len(self.classes)
        confusion = torch.zeros(n, n, dtype=torch.float64, device=env.device)  # gold × predicted, summed over ranks
        loss_sum = torch.zeros(1, dtype=torch.float64, device=env.device)
        for idx, weights in _val_batches(len(self.val), env, p):
            b = self.batch(self.val.rows(idx), env.device)
            with autocast:
                logits = model(b["ids"], classify_at=b["last"]).float()
            ce = torch.nn.functional.cross_entropy(logits, b["labels"], reduction="none").double()
            loss_sum += (ce * weights).sum()
            for g, q, w in zip(b["labels"].tolist(), logits.argmax(-1).tolist(), weights.tolist()):
                confusion[g, q] += w
        _all_sum(confusion)
        _all_sum(loss_sum)
        cm = confusion.cpu().numpy()
        count = cm.sum()
        gold = np.repeat(np.arange(n), cm.sum(axis=1).astype(int))
        pred = np.concatenate([np.repeat(np.arange(n), cm[g].astype(int)) for g in range(n)]) if count else np.zeros(0)
        return {"val_loss": float(loss_sum[0] / max(count, 1)), "val_accuracy": float(np.trace(cm) / max(count, 1)),
                "val_macro_f1": macro_f1(pred, gold, n), "val_examples": int(count)}


def _val_batches(n_val: int, env: _Env, p: LoopConfig):
    """This rank's validation micro-batches with a weight per row: short or empty batches are padded with
    row 0 at weight 0, so every rank runs the same number of forward passes (FSDP's forward is a collective)."""
    for idx in val_indices(n_val, env.rank, env.world, p.micro_batch_size, p.eval_batches):
        weights = torch.zeros(p.micro_batch_size, dtype=torch.float64, device=env.device)
        weights[: len(idx)] = 1.0
        yield np.concatenate([idx, np.zeros(p.micro_batch_size - len(idx), dtype=np.int64)]), weights


def _build_task(task: str, cfg: GristmillConfig, loop_config: dict):
    """The task's train/val data, built identically on every worker."""
    p = getattr(cfg, TASK_SECTIONS[task])
    if task == "pretrain":
        manifest = read_token_manifest(p.data)
        train, val = TokenSplit(p.data, "train", manifest), TokenSplit(p.data, "val", manifest)
        return _LMTask(train, val, train.seq_len)
    import sentencepiece as spm

    from trainer.finetune_data import cls_examples, sft_examples

    sp = spm.SentencePieceProcessor(model_file=str(Path(loop_config["tokenizer_dir"]) / "tokenizer.model"))
    if task == "sft":
        return _LMTask(sft_examples(sp, p, "train", p.seed), sft_examples(sp, p, "val", p.seed), p.seq_len)
    train, val = cls_examples(sp, p, "train", p.seed), cls_examples(sp, p, "val", p.seed)
    return _ClsTask(train, val, p.seq_len, train.classes)


def _node_ip() -> str | None:
    try:
        import ray.util

        return ray.util.get_node_ip_address()
    except Exception:  # local mode without a Ray node
        return None


def train_loop(loop_config: dict) -> dict:
    """Ray Train's per-worker function (also run in-process in local mode)."""
    import ray.train

    cfg = GristmillConfig.model_validate(loop_config["config"])
    task_name = loop_config.get("task", "pretrain")
    p = getattr(cfg, TASK_SECTIONS[task_name])
    local_mode = loop_config["local_mode"]
    env = _setup_env(p, local_mode)
    args = ModelArgs.from_dict(loop_config["model_args"])
    plan = BatchPlan(p.batch_size, p.micro_batch_size, env.world)
    plan.check()
    task = _build_task(task_name, cfg, loop_config)
    train = task.train
    stream = SampleStream(len(train), p.seed)
    (env.run_dir / "workers").mkdir(exist_ok=True)
    (env.run_dir / "workers" / f"rank{env.rank}.json").write_text(json.dumps(
        {"pid": os.getpid(), "rank": env.rank, "world": env.world, "host": os.uname().nodename, "ip": _node_ip()}))

    bf16 = p.precision == "bf16" or (p.precision == "auto" and env.device.type == "cuda")
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    torch.manual_seed(p.seed)  # same initial weights on every rank
    model = GPT(args)
    init = loop_config.get("init_checkpoint")
    if init:  # fine-tuning starts from a pretrained model (a new classification head stays as initialised)
        weights = ckpt.load_weights(Path(init), ckpt.load_model_args(Path(init)))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if not k.startswith("cls_head.")]:
            raise DataError(f"{init} does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model = model.to(env.device)
    wrapped = _wrap(model, env, p, bf16)
    opt = _optimizer(wrapped, p, env.device)

    # resume: Ray's last reported checkpoint (after a failure or a resubmission), or in local mode the newest on disk
    step, samples, tokens_seen = 0, 0, 0
    resume = ray.train.get_checkpoint() if not local_mode else None
    resumed_from = None
    if resume is not None:
        with resume.as_directory() as d:
            state = ckpt.restore(Path(d), wrapped, opt, env.rank)
            resumed_from = d
    elif local_mode and (latest := ckpt.latest_checkpoint(env.run_dir)) is not None:
        state = ckpt.restore(latest, wrapped, opt, env.rank)
        resumed_from = str(latest)
    if resumed_from is not None:
        step, samples, tokens_seen = state["step"], state["samples"], state["tokens_seen"]
        if state["batch_size"] != p.batch_size:
            raise DataError(f"checkpoint at {resumed_from} used batch_size {state['batch_size']}, the config says "
                            f"{p.batch_size}: the data position would not match; keep the batch size to resume")
        log.info("rank %d resumed from %s at step %d (%d samples consumed)", env.rank, resumed_from, step, samples)
    else:
        torch.manual_seed(p.seed + 1 + env.rank)  # per-rank stream for dropout
    if env.rank == 0:
        (env.run_dir / DIVERGED_FILE).unlink(missing_ok=True)
    if p.compile:
        wrapped = torch.compile(wrapped)

    metrics = _Metrics(env.run_dir, env.rank == 0, p.tensorboard, step)
    if env.rank == 0 and resumed_from is not None:
        metrics.write({"step": step, "event": "resumed", "checkpoint": str(resumed_from)})
    fpt = flops_per_token(args, task.seq_len)
    peak, peak_source = peak_flops(env.device, p, torch.bfloat16 if bf16 else torch.float32)
    if env.rank == 0:
        log.info("model %.2fM parameters (%.2fM without embeddings), %.3g FLOPs/token; %d workers × %d micro-batch "
                 "× %d accumulation = %d sequences of %d tokens per step; MFU against %.3g FLOP/s (%s)",
                 model.num_params() / 1e6, model.num_params(False) / 1e6, fpt, env.world, p.micro_batch_size,
                 plan.grad_accum, p.batch_size, task.seq_len, peak, peak_source)
        if task_name != "pretrain":
            log.info("%s: %d train and %d validation rows from %s", task_name, len(train), len(task.val),
                     init or "a fresh model")
    bar = _progress(loop_config.get("progress", False) and env.rank == 0, local_mode, p.max_steps, step)
    tokens_per_step = p.batch_size * task.seq_len
    is_ddp = hasattr(wrapped, "no_sync")
    last = {"loss": float("nan")}
    window_t, window_steps = time.perf_counter(), 0

    def save(metrics_now: dict) -> None:
        msd, osd = ckpt.full_state(wrapped, opt)  # collective under FSDP
        rng = ckpt.gather_rng()  # collective
        name = f"checkpoint_{step:08d}"
        state = {"step": step, "samples": samples, "tokens_seen": tokens_seen, "batch_size": p.batch_size,
                 "seed": p.seed, "world_size": env.world, "scheduler": {"step": step, "lr": lr_at(step, p)},
                 "metrics": metrics_now, "task": task_name, "init_checkpoint": init,
                 "classes": getattr(task, "classes", None)}
        tok_dir = loop_config.get("tokenizer_dir")
        if local_mode:
            path = ckpt.save_checkpoint(env.run_dir / name, msd, osd, rng, state, args, loop_config["config"], tok_dir)
            ray.train.report(metrics_now, checkpoint=ray.train.Checkpoint.from_directory(str(path)))
            if p.keep_checkpoints:  # what CheckpointConfig(num_to_keep) does for Ray-persisted runs
                done = sorted(d for d in env.run_dir.glob("checkpoint_*") if ckpt.is_complete(d))
                for old in done[: -p.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
            return
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if env.rank == 0:
                path = ckpt.save_checkpoint(Path(tmp) / name, msd, osd, rng, state, args, loop_config["config"], tok_dir)
                checkpoint = ray.train.Checkpoint.from_directory(str(path))
            ray.train.report(metrics_now, checkpoint=checkpoint, checkpoint_dir_name=name)

    while step < p.max_steps:
        lr = lr_at(step, p)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=env.device)
        for micro in range(plan.grad_accum):
            start = micro_batch_start(step, micro, env.rank, plan)
            batch = task.batch(train.rows(stream.indices(start, p.micro_batch_size)), env.device)
            sync = micro == plan.grad_accum - 1
            with (wrapped.no_sync() if is_ddp and not sync else contextlib.nullcontext()):
                loss = task.loss(wrapped, batch, autocast)
                (loss / plan.grad_accum).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), p.grad_clip if p.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        # a non-finite loss on any rank shows in the sum on every rank, and the gradient norm is global after the
        # all-reduce: all ranks stop together, before the update, and nothing more is saved
        loss_all = _all_sum(loss_sum / plan.grad_accum) / env.world
        loss_value, grad_norm_value = float(loss_all), float(grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm_value)):
            opt.zero_grad(set_to_none=True)
            if env.rank == 0:
                good = ckpt.latest_checkpoint(env.run_dir) if local_mode else None
                what = f"loss became {loss_value}" if not math.isfinite(loss_value) else f"gradient norm became {grad_norm_value}"
                info = {"step": step + 1, "loss": loss_value, "grad_norm": grad_norm_value, "lr": lr,
                        "message": f"{what} at step {step + 1}; the last good checkpoint is kept"}
                if good:
                    info["last_good_checkpoint"] = str(good)
                (env.run_dir / DIVERGED_FILE).write_text(json.dumps(info, indent=1))
                log.error(info["message"])
            break
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        samples += p.batch_size
        tokens_seen += tokens_per_step
        window_steps += 1
        last = {"loss": loss_value}
        if bar is not None:
            bar.update(1)
        if step % p.log_every == 0 or step == p.max_steps:
            if env.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - window_t
            tps = tokens_per_step * window_steps / dt
            rec = {"step": step, "loss": round(loss_value, 6), "lr": lr, "grad_norm": round(grad_norm_value, 6),
                   "tokens_per_s": round(tps, 1), "mfu": round(fpt * tps / env.world / peak, 6) if peak == peak else None,
                   "tokens_seen": tokens_seen, "time": time.time()}
            if env.rank == 0:
                metrics.write(rec)
                log.info("step %d/%d  loss %.4f  lr %.2e  %.0f tok/s  MFU %s", step, p.max_steps, loss_value, lr, tps,
                         f"{rec['mfu'] * 100:.1f}%" if rec["mfu"] is not None else "n/a")
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.3f}")
            window_t, window_steps = time.perf_counter(), 0
        if step % p.eval_every == 0 or step == p.max_steps:
            wrapped.eval()
            val = task.evaluate(wrapped, env, p, autocast)
            wrapped.train()
            last.update({k: v for k, v in val.items() if not k.endswith(("_tokens", "_examples"))})
            if env.rank == 0:
                metrics.write({"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in val.items()}})
                log.info("step %d  %s", step, "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in val.items()))
            window_t = time.perf_counter()  # evaluation time is not training throughput
        if step % p.checkpoint_every == 0 or step == p.max_steps:
            save({"step": step, **last})
            window_t = time.perf_counter()
    if bar is not None:
        bar.close()
    metrics.close()
    return {"step": step, **last}


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    metrics: dict
    seconds: float


def _abs(path: str) -> str:
    return os.path.abspath(path) if "://" not in path else path


def prepare(cfg: GristmillConfig, task: str = "pretrain") -> tuple[GristmillConfig, ModelArgs, dict]:
    """Check the data and resolve paths (absolute: workers on other nodes see the same) and dimensions.
    Returns the resolved config, the model dimensions and what else the workers need."""
    section = TASK_SECTIONS[task]
    p = getattr(cfg, section)
    if "://" in p.storage_path:
        raise DataError(f"{section}.storage_path must be a filesystem path (local or a shared mount such as NFS)")
    tree = cfg.model_dump(mode="json")
    tree[section]["storage_path"] = _abs(p.storage_path)
    extra: dict = {"task": task, "tokenizer_dir": None, "init_checkpoint": None}
    if task == "pretrain":
        data = _abs(p.data)
        manifest = read_token_manifest(data)
        tree[section]["data"] = data
        args = resolve_model_args(cfg.model, vocab_size=int(manifest["vocab_size"]), seq_len=int(manifest["seq_len"]))
        if manifest["splits"]["train"]["sequences"] == 0:
            raise DataError(f"{data}: the train split has no sequences (corpus smaller than one sequence of {manifest['seq_len'] + 1} tokens)")
        tok = manifest.get("tokenizer")
        if tok and "://" not in tok:
            tok_path = Path(tok) if Path(tok).is_dir() else Path(tok).parent
            extra["tokenizer_dir"] = str(tok_path.resolve()) if (tok_path / "tokenizer.model").is_file() else None
        if extra["tokenizer_dir"] is None:  # checkpoints are still complete for training, not for generation
            log.warning("the tokenizer of %s (%s) was not found: checkpoints will not carry it", data, tok)
    else:
        init = Path(_abs(p.init_checkpoint))
        if not ckpt.is_complete(init):
            raise DataError(f"{section}.init_checkpoint {init} is not a complete checkpoint (run `gristmill pretrain` first)")
        if not (init / "tokenizer.model").is_file():
            raise DataError(f"{init} carries no tokenizer.model: fine-tuning needs the pretraining tokenizer")
        tree[section]["init_checkpoint"] = str(init)
        tree[section]["files"] = [_abs(f) for f in p.files]
        if not p.files:
            raise DataError(f"{section}.files is empty: name the JSONL/JSON/TSV files to fine-tune on")
        extra.update(tokenizer_dir=str(init), init_checkpoint=str(init))
        args = ckpt.load_model_args(init)
        if p.seq_len > args.max_seq_len:
            raise DataError(f"{section}.seq_len {p.seq_len} exceeds the model's max_seq_len {args.max_seq_len}")
        if task == "cls":
            import dataclasses

            import sentencepiece as spm

            from trainer.finetune_data import cls_examples

            sp = spm.SentencePieceProcessor(model_file=str(init / "tokenizer.model"))
            cfg_abs = GristmillConfig.model_validate(tree)
            classes = cls_examples(sp, cfg_abs.finetune_cls, "train", p.seed).classes
            if len(classes) < 2:
                raise DataError(f"finetune_cls: {len(classes)} class(es) in the training split; need at least 2")
            args = dataclasses.replace(args, n_classes=len(classes))
            extra["classes"] = classes
    cfg = GristmillConfig.model_validate(tree)
    BatchPlan(p.batch_size, p.micro_batch_size, max(1, p.num_workers)).check()
    return cfg, args, extra


def _quiet_placement_group_cleaner() -> None:
    """Worker setup when gristmill starts Ray without its dashboard: Ray Train's placement-group
    cleaner asks the State API (served by the dashboard) about the controller every second and
    warns each time it cannot; the run is not affected (gristmill's Ray ends with the run)."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def run_training(cfg: GristmillConfig, task: str = "pretrain", progress: bool = False) -> TrainResult:
    """Launch the loop with Ray Train: on the cluster of RAY_ADDRESS (``ray job submit``), or a Ray started in-process."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t0 = time.time()
    cfg, args, extra = prepare(cfg, task)
    p = getattr(cfg, TASK_SECTIONS[task])
    run_dir = Path(p.storage_path) / p.name
    if not ray.is_initialized():
        no_dashboard = not (p.local_dashboard or os.environ.get("RAY_ADDRESS"))
        ray.init(logging_level=logging.WARNING, log_to_driver=True,
                 **({"include_dashboard": False, "runtime_env": {"worker_process_setup_hook": _quiet_placement_group_cleaner}}
                    if no_dashboard else {}))
    local_mode = p.num_workers == 0
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.model_dump(mode="json"), "model_args": args.to_dict(),
                           "local_mode": local_mode, "progress": progress, **extra},
        torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=p.num_workers, use_gpu=p.use_gpu, placement_strategy=p.placement_strategy,
            resources_per_worker={"CPU": p.cpus_per_worker, **({"GPU": 1} if p.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=p.name, storage_path=p.storage_path,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=p.keep_checkpoints),
            # Ray Train's own INFO lines (one per report and rank) drown the loop's; its warnings stay
            logging_config=LoggingConfig(log_level="WARNING" if not log.isEnabledFor(logging.DEBUG) else "INFO"),
        ),
    )
    result = trainer.fit()
    diverged = run_dir / DIVERGED_FILE
    if diverged.exists():
        info = json.loads(diverged.read_text())
        last_good = info.get("last_good_checkpoint") or (result.checkpoint.path if result.checkpoint else None)
        raise TrainingDivergedError(f"{info['message']} ({last_good or 'no checkpoint was written before it'}); "
                                    "lower the learning rate, raise warmup_steps or check the data")
    checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else ckpt.latest_checkpoint(run_dir)
    return TrainResult(run_dir, checkpoint, result.metrics or {}, time.time() - t0)
