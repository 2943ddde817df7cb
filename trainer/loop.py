"""Training: the per-worker loop (runs inside Ray Train workers, or in this process in local mode).

The loop is plain PyTorch and reads top to bottom like nanoGPT's: set up the model and optimizer,
resume from the last checkpoint, then per step: train step (gradient accumulation, clipping),
divergence check, log, validate, save. DDP (or FSDP2) over gloo/NCCL as Ray Train sets it up; the
task (trainer/tasks.py) supplies the data, the loss and the validation metrics. Ray Train supplies
what a cluster needs and nothing else: the worker group, the process group, checkpoint persistence
(``ray.train.report``), and restarts from the last checkpoint after a failure (``FailureConfig``,
``ray.train.get_checkpoint``). The driver that launches it is trainer/launch.py; the optimizer and schedule
trainer/optim.py; MFU trainer/mfu.py; metrics.jsonl and TensorBoard trainer/metrics.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gristmill.config import GristmillConfig, LoopConfig
from gristmill.trainer import checkpoint as ckpt
from gristmill.trainer import run_store
from gristmill.trainer.data import BatchPlan, DataError, SampleStream, micro_batch_start
from gristmill.trainer.metrics import MetricsLog, progress_bar
from gristmill.trainer.mfu import mfu, run_peak, use_bf16
from gristmill.trainer.model import GPT, RNG_LOCK, ModelArgs, build_model, flops_per_token
from gristmill.trainer.optim import build_optimizer, check_same_optimizer, lr_at
from gristmill.trainer.parallel import node_ip, quiet_ray_train_reports, wrap
from gristmill.trainer.plots import refresh_plot
from gristmill.trainer.tasks import TASK_SECTIONS, ClsTask, LMTask, MLMTask, all_sum, build_task

log = logging.getLogger("gristmill.trainer")

DIVERGED_FILE = "DIVERGED.json"

@dataclass
class _Run:
    """One worker's run: what the steps of the loop share."""

    loop_config: dict
    task_name: str
    p: LoopConfig  # the task's section: the loop settings and the task's data
    rank: int
    world: int
    device: torch.device
    local_mode: bool
    run_dir: Path
    args: ModelArgs
    plan: BatchPlan
    task: LMTask | MLMTask | ClsTask
    stream: SampleStream
    autocast: contextlib.AbstractContextManager
    bf16: bool
    model: GPT = None  # unwrapped (its parameter count, its dimensions)
    wrapped: torch.nn.Module = None  # DDP / FSDP / compiled: what runs forward and backward
    # batch → the training loss through ``wrapped`` (compiled with the model when compiling)
    loss: Callable[[dict], torch.Tensor] = None
    opt: torch.optim.Optimizer = None
    step: int = 0
    samples: int = 0  # the data position: samples consumed
    tokens_seen: int = 0
    metrics: MetricsLog = None
    bar: object = None  # a tqdm bar (tqdm's, or Ray's on workers) on rank 0 with progress
    fpt: float = 0.0  # training FLOPs per token
    peak: float = float("nan")  # one device's peak FLOP/s (MFU's denominator)
    last: dict = field(default_factory=lambda: {"loss": float("nan")})  # what the next report carries
    # where this attempt resumed from, until finite steps vouch for it: the first step's loss comes from the
    # checkpoint's weights alone, the second's from an update that used its optimizer state too
    resumed_checkpoint: Path | None = None
    resumed_step: int = 0
    # the throughput window: steps since the last log line, timed without validation and saving
    window_t: float = 0.0
    window_steps: int = 0
    plotted_at: float = float("-inf")  # monotonic time of the last refresh of training.png

    @property
    def init_checkpoint(self) -> str | None:
        return self.loop_config.get("init_checkpoint")


def set_up(loop_config: dict) -> _Run:
    """The worker's device, data and task, then the model (fine-tuning: from its init checkpoint)
    and the optimizer; identical initial weights on every rank."""
    import ray.train

    cfg = GristmillConfig.model_validate(loop_config["config"])
    quiet_ray_train_reports()
    task_name = loop_config.get("task", "pretrain")
    p = getattr(cfg, TASK_SECTIONS[task_name])
    # plain: a run of one worker without Ray Train (ablate.runs_per_process: several in threads of one process)
    plain = loop_config.get("plain", False)
    local_mode = loop_config["local_mode"] or plain
    if plain:
        rank, world = 0, 1
    else:
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if p.use_gpu and torch.cuda.is_available():
        import ray.train.torch

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # local mode: torchrun's, else the one device
        device = ray.train.torch.get_device() if not local_mode else torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        if not local_mode:
            torch.set_num_threads(p.cpus_per_worker)
    run_dir = Path(p.storage_path) / p.name
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = BatchPlan(p.batch_size, p.micro_batch_size, world)
    plan.check()
    task = build_task(task_name, cfg, loop_config.get("tokenizer_dir"), ModelArgs.from_dict(loop_config["model_args"]))
    (run_dir / "workers").mkdir(exist_ok=True)
    (run_dir / "workers" / f"rank{rank}.json").write_text(json.dumps(
        {"pid": os.getpid(), "rank": rank, "world": world, "host": os.uname().nodename, "ip": node_ip()}))
    bf16 = use_bf16(p, device, rank == 0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    run = _Run(loop_config, task_name, p, rank, world, device, local_mode, run_dir,
               ModelArgs.from_dict(loop_config["model_args"]), plan, task,
               # a mixture has its own stream (trainer/mixture.py): the same contract, a function of the position
               task.train.stream(p.seed) if hasattr(task.train, "stream") else SampleStream(len(task.train), p.seed),
               autocast, bf16)

    with RNG_LOCK:  # same initial weights on every rank (whatever other runs share this process)
        torch.manual_seed(p.seed)
        model = build_model(run.args)
    if run.init_checkpoint:  # fine-tuning starts from a trained model (a new classification head stays as initialised)
        init = Path(run.init_checkpoint)
        missing, unexpected = model.load_state_dict(ckpt.load_weights(init, ckpt.load_model_args(init)), strict=False)
        if unexpected or [k for k in missing if not k.startswith(("cls_head.", "cls_dense."))]:
            raise DataError(f"{init} does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    run.model = model.to(device)
    run.wrapped = wrap(run.model, p.parallel, world, device, bf16)
    run.opt = build_optimizer(run.wrapped, p, device)
    return run


def resume(run: _Run) -> None:
    """Continue from Ray's last reported checkpoint (after a failure or a resubmission), or in local
    mode from the newest complete one on disk: weights, optimizer, RNG and the data position."""
    import ray.train

    p, state, resumed_from = run.p, None, None
    # the newest complete checkpoint in storage wins over Ray Train's record: the controller learns of
    # a reported checkpoint by polling, so a run killed right after one completed may not know of it
    # newest that verifies (checksums, not marked suspect): a damaged one is passed over, with why
    if run.loop_config.get("remote_run") and not run.local_mode:  # a worker on any node: the store's checkpoints
        run_store.pull(run.loop_config["remote_run"], run.run_dir)
    skipped: list[str] = []
    newest = ckpt.newest_verified_checkpoint(run.run_dir, skipped)
    if skipped and run.rank == 0:
        for why in skipped:
            log.warning("not resuming from %s; taking an older checkpoint", why)
    newest_step = ckpt.read_state(newest)["step"] if newest is not None else -1
    if newest is not None:
        check_same_optimizer(ckpt.read_state(newest), newest, p)
    checkpoint = ray.train.get_checkpoint() if not run.local_mode else None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if ckpt.verify(Path(d)) is None and ckpt.read_state(Path(d))["step"] >= newest_step:
                state = ckpt.restore(Path(d), run.wrapped, run.opt, run.rank)
                resumed_from = d
    if state is None and newest is not None:
        if checkpoint is not None and run.rank == 0:
            log.info("Ray Train recorded an older checkpoint than %s: resuming from the newest", newest)
        state = ckpt.restore(newest, run.wrapped, run.opt, run.rank)
        resumed_from = str(newest)
    if state is not None:
        run.step, run.samples, run.tokens_seen = state["step"], state["samples"], state["tokens_seen"]
        if state["batch_size"] != p.batch_size:
            raise DataError(f"checkpoint at {resumed_from} used batch_size {state['batch_size']}, the config says "
                            f"{p.batch_size}: the data position would not match; keep the batch size to resume")
        log.info("rank %d resumed from %s at step %d (%d samples consumed)", run.rank, resumed_from, run.step,
                 run.samples)
        run.resumed_checkpoint, run.resumed_step = run.run_dir / Path(resumed_from).name, run.step
    else:
        with RNG_LOCK:
            torch.manual_seed(p.seed + 1 + run.rank)  # per-rank stream for dropout
    if run.rank == 0:
        (run.run_dir / DIVERGED_FILE).unlink(missing_ok=True)
    run.loss = functools.partial(run.task.loss, run.wrapped, autocast=run.autocast)
    if p.compile:
        run.wrapped = torch.compile(run.wrapped)  # what validation runs
        # the model and its loss compiled as one function: the fp32 upcast of the logits fuses into the
        # cross-entropy instead of materialising (B, T, vocab) floats. Measured on an H200 with the 124M
        # preset (bench/bench_model_step.py): 0.81x nanoGPT's tokens/s with the loss outside, 0.99x inside.
        run.loss = torch.compile(functools.partial(run.task.loss, run.wrapped, autocast=run.autocast))
    run.metrics = MetricsLog(run.run_dir, run.rank == 0, p.tensorboard, run.step)
    if run.rank == 0 and resumed_from is not None:
        run.metrics.write({"step": run.step, "event": "resumed", "checkpoint": str(resumed_from)})


def start_logging(run: _Run) -> None:
    """The opening lines (model size, batch layout, the peak MFU is measured against), the progress bar."""
    p = run.p
    run.fpt = flops_per_token(run.args, run.task.seq_len)
    dtype = torch.bfloat16 if run.bf16 else torch.float32
    run.peak, peak_source = run_peak(run.device, p, dtype, run.loop_config.get("cpu_peak"))
    if run.rank == 0:
        log.info("model %.2fM parameters (%.2fM without embeddings), %.3g FLOPs/token; %d workers × %d micro-batch "
                 "× %d accumulation = %d sequences of %d tokens per step; MFU against %.3g FLOP/s (%s)",
                 run.model.num_params() / 1e6, run.model.num_params(False) / 1e6, run.fpt, run.world,
                 p.micro_batch_size, run.plan.grad_accum, p.batch_size, run.task.seq_len, run.peak, peak_source)
        # what MFU is measured against, once at the start of the log
        run.metrics.write({"step": run.step, "event": "start", "peak_flops": run.peak if run.peak == run.peak else None,
                           "peak_source": peak_source, "flops_per_token": run.fpt, "time": time.time()})
        if run.task_name != "pretrain":
            log.info("%s: %d train and %d validation rows from %s", run.task_name, len(run.task.train),
                     len(run.task.val), run.init_checkpoint or "a fresh model")
    show = run.loop_config.get("progress", False) and run.rank == 0
    run.bar = progress_bar(show, run.local_mode, p.max_steps, run.step)
    run.window_t = time.perf_counter()


def train_step(run: _Run) -> tuple[float, float]:
    """One optimizer step's gradients: forward and backward over the micro-batches (DDP syncs on the
    last), then clipping. Returns the loss (mean over ranks) and the global gradient norm; the
    update itself waits for the divergence check."""
    p, wrapped, plan = run.p, run.wrapped, run.plan
    lr = lr_at(run.step, p)
    for group in run.opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    loss_sum = torch.zeros((), device=run.device)
    is_ddp = hasattr(wrapped, "no_sync")
    for micro in range(plan.grad_accum):
        start = micro_batch_start(run.step, micro, run.rank, plan)
        rows = run.task.train.rows(run.stream.indices(start, p.micro_batch_size))
        # the data position of each row: MLM's masks are drawn from it
        batch = run.task.batch(rows, run.device, positions=np.arange(start, start + p.micro_batch_size))
        sync = micro == plan.grad_accum - 1
        with (wrapped.no_sync() if is_ddp and not sync else contextlib.nullcontext()):
            loss = run.loss(batch)
            (loss / plan.grad_accum).backward()
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), p.grad_clip if p.grad_clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    # a non-finite loss on any rank shows in the sum on every rank, and the gradient norm is global
    # after the all-reduce: all ranks see the same values and take the same decision
    loss_all = all_sum(loss_sum / plan.grad_accum) / run.world
    return float(loss_all), float(grad_norm)


def diverged(run: _Run, loss: float, grad_norm: float) -> bool:
    """A non-finite loss or gradient norm: all ranks stop before the update, nothing more is saved,
    and rank 0 leaves DIVERGED.json naming the last good checkpoint."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return False
    run.opt.zero_grad(set_to_none=True)
    if run.rank == 0:
        what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {grad_norm}"
        if run.resumed_checkpoint is not None and run.resumed_checkpoint.is_dir():
            # diverged before one finite step from where it resumed: that checkpoint is not "good" (a damaged
            # optimizer state loads and gives NaN two steps later); every resubmission would fail the same way
            ckpt.mark_suspect(run.resumed_checkpoint, f"the run diverged ({what}) at step {run.step + 1}, right "
                              "after resuming from it")
            log.error("%s is marked suspect: a resubmitted run resumes from an older checkpoint",
                      run.resumed_checkpoint.name)
        good = ckpt.newest_verified_checkpoint(run.run_dir)
        info = {"step": run.step + 1, "loss": loss, "grad_norm": grad_norm, "lr": lr_at(run.step, run.p),
                "message": f"{what} at step {run.step + 1}; the last good checkpoint is kept"}
        if good:
            info["last_good_checkpoint"] = str(good)
        (run.run_dir / DIVERGED_FILE).write_text(json.dumps(info, indent=1))
        log.error(info["message"])
    return True


def apply_update(run: _Run, loss: float) -> None:
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    run.step += 1
    if run.step >= run.resumed_step + 2:  # two finite steps from it: the checkpoint resumed from was good
        run.resumed_checkpoint = None
    run.samples += run.p.batch_size
    run.tokens_seen += run.p.batch_size * run.task.seq_len
    run.window_steps += 1
    run.last = {"loss": loss}
    if run.bar is not None:
        run.bar.update(1)


def log_step(run: _Run, loss: float, grad_norm: float) -> None:
    """Loss, learning rate, gradient norm, tokens/s and MFU over the window since the last line."""
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    tps = run.p.batch_size * run.task.seq_len * run.window_steps / (time.perf_counter() - run.window_t)
    lr = lr_at(run.step - 1, run.p)
    util = mfu(run.fpt, tps, run.world, run.peak)
    rec = {"step": run.step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
           "tokens_per_s": round(tps, 1), "mfu": util, "tokens_seen": run.tokens_seen, "time": time.time()}
    if run.rank == 0:
        run.metrics.write(rec)
        log.info("step %d/%d  loss %.4f  lr %.2e  %.0f tok/s  MFU %s", run.step, run.p.max_steps, loss, lr, tps,
                 f"{util * 100:.1f}%" if util is not None else "n/a")
        if run.bar is not None:
            run.bar.set_postfix(loss=f"{loss:.3f}")
    run.window_t, run.window_steps = time.perf_counter(), 0


def validate(run: _Run) -> None:
    paused = time.perf_counter()
    run.wrapped.eval()
    val = run.task.evaluate(run.wrapped, run.rank, run.world, run.p, run.device, run.autocast)
    run.wrapped.train()
    run.last.update({k: v for k, v in val.items() if not k.endswith(("_tokens", "_examples"))})
    if run.rank == 0:
        run.metrics.write({"step": run.step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in val.items()}})
        log.info("step %d  %s", run.step, "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in val.items()))
    # validation time is not training throughput: the window's start moves forward by it (the steps
    # before it stay in the window)
    run.window_t += time.perf_counter() - paused


def save(run: _Run) -> None:
    """A complete checkpoint (weights, optimizer, every rank's RNG, data position), reported to Ray
    Train with the last metrics. Collective: every rank calls it at the same steps."""
    paused = time.perf_counter()
    p, metrics_now = run.p, {"step": run.step, **run.last}
    msd, osd = ckpt.full_state(run.wrapped, run.opt)  # collective under FSDP
    rng = ckpt.gather_rng()  # collective
    name = f"checkpoint_{run.step:08d}"
    state = {"step": run.step, "samples": run.samples, "tokens_seen": run.tokens_seen, "batch_size": p.batch_size,
             "seed": p.seed, "world_size": run.world, "scheduler": {"step": run.step, "lr": lr_at(run.step, p)},
             "optimizer": getattr(p, "optimizer", "adamw"),
             "metrics": metrics_now, "task": run.task_name, "init_checkpoint": run.init_checkpoint,
             "classes": getattr(run.task, "classes", None)}
    config, tok_dir = run.loop_config["config"], run.loop_config.get("tokenizer_dir")
    import ray.train

    if run.local_mode:  # rank 0 writes to storage itself (under torchrun, the others wait for it)
        checkpoint = None
        if run.rank == 0:
            path = ckpt.save_checkpoint(run.run_dir / name, msd, osd, rng, state, run.args, config, tok_dir)
            checkpoint = ray.train.Checkpoint.from_directory(str(path))
            if p.keep_checkpoints:  # what CheckpointConfig(num_to_keep) does for Ray-persisted runs
                done = sorted(d for d in run.run_dir.glob("checkpoint_*") if ckpt.is_complete(d))
                for old in done[: -p.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
        if not run.loop_config.get("plain"):  # a plain run has no Ray Train session to report to
            ray.train.report(metrics_now, checkpoint=checkpoint)
        if run.world > 1:
            dist.barrier()
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if run.rank == 0:
                path = ckpt.save_checkpoint(Path(tmp) / name, msd, osd, rng, state, run.args, config, tok_dir)
                checkpoint = ray.train.Checkpoint.from_directory(str(path))
            ray.train.report(metrics_now, checkpoint=checkpoint, checkpoint_dir_name=name)
    if run.rank == 0 and run.metrics.enabled:  # RUN_DIR/training.png: a look at the run without TensorBoard
        run.plotted_at = refresh_plot(run.run_dir, f"{run.run_dir.name}: {run.task_name}", run.step == p.max_steps,
                                      run.plotted_at)
    if run.rank == 0 and run.loop_config.get("remote_run"):  # storage_path on an object store
        run_store.push(run.run_dir, run.loop_config["remote_run"])
    run.window_t += time.perf_counter() - paused  # as in validate


def _due(step: int, every: int, max_steps: int) -> bool:
    return step % every == 0 or step == max_steps


def train_loop(loop_config: dict) -> dict:
    """Ray Train's per-worker function (also run in-process in local mode)."""
    run = set_up(loop_config)
    resume(run)
    start_logging(run)
    p = run.p
    while run.step < p.max_steps:
        loss, grad_norm = train_step(run)
        if diverged(run, loss, grad_norm):
            break
        apply_update(run, loss)
        if _due(run.step, p.log_every, p.max_steps):
            log_step(run, loss, grad_norm)
        if _due(run.step, p.eval_every, p.max_steps):
            validate(run)
        if _due(run.step, p.checkpoint_every, p.max_steps):
            save(run)
    if run.bar is not None:
        run.bar.close()
    run.metrics.close()
    return {"step": run.step, **run.last}
