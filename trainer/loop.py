"""Training: the per-worker loop (runs inside Ray Train workers) and the driver that launches it.

The loop is plain PyTorch and reads top to bottom like nanoGPT's: set up the model and optimizer,
resume from the last checkpoint, then per step: train step (gradient accumulation, clipping),
divergence check, log, validate, save. DDP (or FSDP2) over gloo/NCCL as Ray Train sets it up; the
task (trainer/tasks.py) supplies the data, the loss and the validation metrics. Ray Train supplies
what a cluster needs and nothing else: the worker group, the process group, checkpoint persistence
(``ray.train.report``), and restarts from the last checkpoint after a failure (``FailureConfig``,
``ray.train.get_checkpoint``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gristmill.config import GristmillConfig, LoopConfig, PretrainConfig
from gristmill.errors import at_stop, reinstall_stop_handlers
from gristmill.outputs import recorded_run
from gristmill.tokenizer.tokens import read_token_manifest
from gristmill.trainer import TrainingDivergedError
from gristmill.trainer import checkpoint as ckpt
from gristmill.trainer.data import BatchPlan, DataError, SampleStream, micro_batch_start
from gristmill.trainer.model import GPT, ModelArgs, build_model, flops_per_token, resolve_model_args
from gristmill.trainer.optim import build_optimizer, lr_at
from gristmill.trainer.tasks import TASK_SECTIONS, all_sum, build_task

log = logging.getLogger("gristmill.trainer")

DIVERGED_FILE = "DIVERGED.json"

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (SXM parts).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
                  "4090": 165e12}


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
    # CPU: no data sheet; measure what a large matmul reaches with this worker's threads, once per
    # process (cached). A measurement taken while other processes start reads low (the demo once
    # printed MFU 206%): the driver measures before it starts Ray, and its workers on the same
    # machine take its number (run_training, start_logging); the best of five windows besides.
    key = (dtype, torch.get_num_threads())
    if key not in _CPU_PEAK:
        n = 2048
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = 0.0
        for _ in range(5):
            t0, reps = time.perf_counter(), 0
            while time.perf_counter() - t0 < 0.2:
                a @ b
                reps += 1
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
        _CPU_PEAK[key] = (best, f"measured {dtype} matmul on {torch.get_num_threads()} CPU threads")
    return _CPU_PEAK[key]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX); elsewhere PyTorch emulates
    bf16 and autocast makes a CPU step tens of times slower. Unknown (no /proc/cpuinfo): assume not."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def driver_cpu_peak(p: PretrainConfig, threads: int) -> dict:
    """The CPU peak measured in the driver before Ray (if any) starts (nothing else is running yet), with
    the thread count and dtype a worker must have to use it."""
    bf16 = p.precision == "bf16" and cpu_has_native_bf16()
    dtype = torch.bfloat16 if bf16 else torch.float32
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        value, source = peak_flops(torch.device("cpu"), p, dtype)
    finally:
        torch.set_num_threads(before)
    return {"flops": value, "source": source + " (by the driver, before training started)", "threads": threads,
            "dtype": str(dtype), "host": os.uname().nodename}


_CPU_PEAK: dict[tuple, tuple[float, str]] = {}


def mfu(flops_per_token: float, tokens_per_s: float, world: int, peak: float) -> float | None:
    """Model FLOPs utilisation of one device, or None when it cannot be known: no peak, or a
    measured CPU peak that the model itself beat (the machine was busy while it was measured)."""
    if not peak == peak or peak <= 0:
        return None
    value = flops_per_token * tokens_per_s / world / peak
    return round(value, 6) if value <= 1.0 else None


# ---------------------------------------------------------------------------------------------
# The per-worker loop
# ---------------------------------------------------------------------------------------------


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
    task: object  # tasks.LMTask | tasks.ClsTask
    stream: SampleStream
    autocast: contextlib.AbstractContextManager
    bf16: bool
    model: GPT = None  # unwrapped (its parameter count, its dimensions)
    wrapped: torch.nn.Module = None  # DDP / FSDP / compiled: what runs forward and backward
    loss: object = None  # batch → the training loss through ``wrapped`` (compiled with the model when compiling)
    opt: torch.optim.Optimizer = None
    step: int = 0
    samples: int = 0  # the data position: samples consumed
    tokens_seen: int = 0
    metrics: _Metrics = None
    bar: object = None
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


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every ``ray.train.report`` at INFO with the whole report, on a logger named by its
    file path (so its LoggingConfig does not reach it); gristmill's own lines already say the same."""
    if log.isEnabledFor(logging.DEBUG):
        return
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def set_up(loop_config: dict) -> _Run:
    """The worker's device, data and task, then the model (fine-tuning: from its init checkpoint)
    and the optimizer; identical initial weights on every rank."""
    import ray.train

    cfg = GristmillConfig.model_validate(loop_config["config"])
    _quiet_ray_train_reports()
    task_name = loop_config.get("task", "pretrain")
    p = getattr(cfg, TASK_SECTIONS[task_name])
    local_mode = loop_config["local_mode"]
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
        {"pid": os.getpid(), "rank": rank, "world": world, "host": os.uname().nodename, "ip": _node_ip()}))
    bf16 = p.precision == "bf16" or (p.precision == "auto" and device.type == "cuda")
    if bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        if rank == 0:
            log.warning("pretrain.precision is bf16 but this CPU has no native bf16 (no avx512_bf16 or amx_bf16): "
                        "PyTorch emulates it, and a bf16 step ran 27x slower than fp32 on an AVX2 EPYC (83 s "
                        "against 3 s); training in fp32. Set pretrain.precision: fp32 to silence this.")
        bf16 = False
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    run = _Run(loop_config, task_name, p, rank, world, device, local_mode, run_dir,
               ModelArgs.from_dict(loop_config["model_args"]), plan, task,
               # a mixture has its own stream (trainer/mixture.py): the same contract, a function of the position
               task.train.stream(p.seed) if hasattr(task.train, "stream") else SampleStream(len(task.train), p.seed),
               autocast, bf16)

    torch.manual_seed(p.seed)  # same initial weights on every rank
    model = build_model(run.args)
    if run.init_checkpoint:  # fine-tuning starts from a trained model (a new classification head stays as initialised)
        init = Path(run.init_checkpoint)
        missing, unexpected = model.load_state_dict(ckpt.load_weights(init, ckpt.load_model_args(init)), strict=False)
        if unexpected or [k for k in missing if not k.startswith(("cls_head.", "cls_dense."))]:
            raise DataError(f"{init} does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    run.model = model.to(device)
    run.wrapped = _wrap(run.model, run, bf16)
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
    skipped: list[str] = []
    newest = ckpt.newest_verified_checkpoint(run.run_dir, skipped)
    if skipped and run.rank == 0:
        for why in skipped:
            log.warning("not resuming from %s; taking an older checkpoint", why)
    newest_step = ckpt.read_state(newest)["step"] if newest is not None else -1
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
    run.metrics = _Metrics(run.run_dir, run.rank == 0, p.tensorboard, run.step)
    if run.rank == 0 and resumed_from is not None:
        run.metrics.write({"step": run.step, "event": "resumed", "checkpoint": str(resumed_from)})


def start_logging(run: _Run) -> None:
    """The opening lines (model size, batch layout, the peak MFU is measured against), the progress bar."""
    p = run.p
    run.fpt = flops_per_token(run.args, run.task.seq_len)
    dtype = torch.bfloat16 if run.bf16 else torch.float32
    measured = run.loop_config.get("cpu_peak")
    if (run.device.type == "cpu" and not p.peak_tflops and measured and measured["host"] == os.uname().nodename
            and measured["threads"] == torch.get_num_threads() and measured["dtype"] == str(dtype)):
        run.peak, peak_source = measured["flops"], measured["source"]
    else:
        run.peak, peak_source = peak_flops(run.device, p, dtype)
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
    run.bar = _progress(run.loop_config.get("progress", False) and run.rank == 0, run.local_mode, p.max_steps, run.step)
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
    refresh_plot(run)
    run.window_t += time.perf_counter() - paused  # as in validate


#: training.png is redrawn at a checkpoint at most this often (and always at the last one)
PLOT_EVERY_S = 60.0


def refresh_plot(run: _Run) -> None:
    """Rank 0 redraws RUN_DIR/training.png (trainer/plots.py) from the metrics so far: a look at the run
    without starting TensorBoard. A plot that fails is a warning, never the run's end."""
    if run.rank != 0 or not run.metrics.enabled:
        return
    if run.step != run.p.max_steps and time.monotonic() - run.plotted_at < PLOT_EVERY_S:
        return
    run.plotted_at = time.monotonic()
    try:
        from gristmill.trainer.plots import PLOT_FILE, plot_runs

        plot_runs([run.run_dir], run.run_dir / PLOT_FILE, f"{run.run_dir.name}: {run.task_name}")
    except Exception as e:  # noqa: BLE001 - a plot is never worth a run
        log.warning("could not draw %s: %s: %s", run.run_dir / "training.png", type(e).__name__, e)


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


# ---------------------------------------------------------------------------------------------
# The loop's parts
# ---------------------------------------------------------------------------------------------


def _node_ip() -> str | None:
    try:
        import ray.util

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - local mode without a Ray node
        return None


def _wrap(model: GPT, run: _Run, bf16: bool):
    if not (dist.is_available() and dist.is_initialized()) or run.world == 1:
        return model
    if run.p.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy()
        if bf16:
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        return fully_shard(model, mp_policy=mp)
    from torch.nn.parallel import DistributedDataParallel as DDP

    # a classifier never uses an untied output matrix: DDP must not wait for its gradient
    unused = bool(model.args.n_classes) and not model.args.tie_embeddings
    device_ids = [run.device.index] if run.device.type == "cuda" else None
    return DDP(model, device_ids=device_ids, find_unused_parameters=unused)


def tensorboard_scalars(rec: dict) -> dict[str, float]:
    """A metrics record as TensorBoard tags: ``train/loss``, ``val/loss``, ``val/ppl`` ...; not the wall-clock
    time (a Unix timestamp as float32 is no curve) nor the step (TensorBoard's own axis)."""
    out = {}
    for k, v in rec.items():
        if k in ("step", "time") or not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            continue
        out[f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}"] = float(v)
    return out


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
        if self.tb is not None and "event" not in rec:  # start/resume events: one point each, not a curve
            for tag, v in tensorboard_scalars(rec).items():
                self.tb.add_scalar(tag, v, rec["step"])
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


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    metrics: dict
    seconds: float


def _abs(path: str) -> str:
    return os.path.abspath(path) if "://" not in path else path


def mask_token_id(tokenizer_dir: str) -> int:
    """The <mask> id of a tokenizer directory, or an error saying how to get a tokenizer that has one."""
    import sentencepiece as spm

    from gristmill.tokenizer.train import MASK

    sp = spm.SentencePieceProcessor(model_file=str(Path(tokenizer_dir) / "tokenizer.model"))
    mask_id = sp.piece_to_id(MASK)
    if mask_id == sp.unk_id():  # SentencePiece's answer for a piece it does not have
        raise DataError(f"model.objective: mlm needs a tokenizer with a {MASK} token, and {tokenizer_dir} has none "
                        "(trained before gristmill reserved it): train the tokenizer again (`gristmill tokenizer "
                        "train`, which reserves <mask>) and tokenize again, or pretrain with model.objective: clm")
    return mask_id


def cls_pooling(pooling: str, objective: str, init) -> str:
    """finetune_cls.pooling resolved for the checkpoint's objective (auto: last for causal, mean for MLM)."""
    if pooling == "auto":
        return "mean" if objective == "mlm" else "last"
    if objective == "mlm" and pooling == "last":
        raise DataError(f"finetune_cls.pooling: last is for causal checkpoints; {init} is an MLM encoder: use first "
                        "or mean (or auto)")
    if objective != "mlm" and pooling != "last":
        raise DataError(f"finetune_cls.pooling: {pooling} is for MLM encoders; {init} is a causal model, whose last "
                        "token is the one that has read the text: use last (or auto)")
    return pooling


def _prepare_mixture(p, section_tree: dict, section: str) -> tuple[str, dict]:
    """Check a mixture before any training: every source a token directory, all with one tokenizer and
    seq_len, weights usable, and no epoch cap exceeded by the run's token budget (max_steps × batch_size
    sequences). Logs MassiveText's table and writes it to STORAGE/NAME/mixture.json. Returns the first
    source's directory and manifest (the tokenizer and shape of all)."""
    from gristmill.trainer.mixture import MixedStream, MixtureSource, check_compatible, format_plan, plan

    if p.data:
        raise DataError(f"{section}.data and {section}.mixture are both set: a run reads one token directory or a "
                        f"mixture; unset one (--set {section}.data=null)")
    manifests, sources = {}, []
    for k, src in enumerate(p.mixture):
        path = _abs(src.data)
        section_tree["mixture"][k]["data"] = path
        try:
            manifests[src.name] = read_token_manifest(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{section}.mixture source {src.name!r}: {e}") from None
        sources.append(MixtureSource(src.name, src.weight, int(manifests[src.name]["splits"]["train"]["sequences"]),
                                     src.max_epochs))
    check_compatible(manifests)
    first = next(iter(manifests.values()))
    rows = plan(MixedStream(sources, p.seed), p.max_steps * p.batch_size, int(first["seq_len"]))
    log.info("mixture over %d steps × %d sequences of %d tokens:\n%s", p.max_steps, p.batch_size,
             int(first["seq_len"]), format_plan(rows))
    run_dir = Path(section_tree["storage_path"]) / p.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "mixture.json").write_text(json.dumps({"sources": rows, "steps": p.max_steps,
                                                      "batch_size": p.batch_size}, indent=1) + "\n")
    return section_tree["mixture"][0]["data"], first


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
        if p.mixture:
            data, manifest = _prepare_mixture(p, tree[section], section)
        elif not p.data:
            raise DataError("pretrain.data is not set: give a config with a pretrain: section (e.g. configs/demo.yaml) "
                            "or --set pretrain.data=TOKENS (a directory written by `gristmill tokenize`)")
        else:
            data = _abs(p.data)
            manifest = read_token_manifest(data)
            tree[section]["data"] = data
        args = resolve_model_args(cfg.model, vocab_size=int(manifest["vocab_size"]), seq_len=int(manifest["seq_len"]))
        if manifest["splits"]["train"]["sequences"] == 0:
            raise DataError(f"{data}: the train split has no sequences (corpus smaller than one sequence of "
                            f"{manifest['seq_len'] + 1} tokens)")
        tok = manifest.get("tokenizer")
        if tok and "://" not in tok:
            tok_path = Path(tok) if Path(tok).is_dir() else Path(tok).parent
            extra["tokenizer_dir"] = str(tok_path.resolve()) if (tok_path / "tokenizer.model").is_file() else None
        if extra["tokenizer_dir"] is None:  # checkpoints are still complete for training, not for generation
            if args.objective == "mlm":
                raise DataError(f"model.objective: mlm needs the tokenizer of {data} (its <mask> id), and {tok} was "
                                "not found: tokenize again with a tokenizer directory this machine can read")
            log.warning("the tokenizer of %s (%s) was not found: checkpoints will not carry it", data, tok)
        if args.objective == "mlm":
            args = dataclasses.replace(args, mask_id=mask_token_id(extra["tokenizer_dir"]))
        if args.document_mask:
            eos = (manifest.get("special_tokens") or {}).get("eos", -1)
            if eos is None or eos < 0:
                raise DataError(f"model.document_mask needs the eos id of the tokenizer of {data}, and its token "
                                "manifest names none: tokenize with a tokenizer that has an eos piece")
            args = dataclasses.replace(args, eos_id=int(eos))
    else:
        if not p.init_checkpoint:
            raise DataError(f"{section}.init_checkpoint is not set: give a config with a {section}: section "
                            f"(e.g. configs/demo.yaml) or --set {section}.init_checkpoint=CHECKPOINT "
                            "(a checkpoint_NNNNNNNN directory of `gristmill pretrain`)")
        try:
            init = ckpt.resolve_checkpoint(_abs(p.init_checkpoint))
        except ckpt.CheckpointError as e:
            raise DataError(f"{section}.init_checkpoint: {e}") from None
        if not (init / "tokenizer.model").is_file():
            raise DataError(f"{init} carries no tokenizer.model: fine-tuning needs the pretraining tokenizer")
        tree[section]["init_checkpoint"] = str(init)
        tree[section]["files"] = [_abs(f) for f in p.files]
        if not p.files:
            raise DataError(f"{section}.files is empty: name the JSONL/JSON/TSV files to fine-tune on")
        extra.update(tokenizer_dir=str(init), init_checkpoint=str(init))
        args = ckpt.load_model_args(init)
        if task == "sft" and args.objective == "mlm":
            raise DataError(f"{init} is a masked-language-model encoder (model.objective: mlm): SFT trains a model to "
                            "generate, which an encoder cannot. Fine-tune it for classification with `gristmill "
                            "finetune-cls`, or run SFT from a causal checkpoint (model.objective: clm)")
        if p.seq_len > args.max_seq_len:
            raise DataError(f"{section}.seq_len {p.seq_len} exceeds the model's max_seq_len {args.max_seq_len}")
        if task == "cls":
            import sentencepiece as spm

            from gristmill.trainer.finetune_data import cls_examples

            pooling = cls_pooling(p.pooling, args.objective, init)
            tree[section]["pooling"] = pooling
            sp = spm.SentencePieceProcessor(model_file=str(init / "tokenizer.model"))
            cfg_abs = GristmillConfig.model_validate(tree)
            classes = cls_examples(sp, cfg_abs.finetune_cls, "train", p.seed).classes
            if len(classes) < 2:
                raise DataError(f"finetune_cls: {len(classes)} class(es) in the training split; need at least 2")
            args = dataclasses.replace(args, n_classes=len(classes), pooling=pooling)
            extra["classes"] = classes
    cfg = GristmillConfig.model_validate(tree)
    BatchPlan(p.batch_size, p.micro_batch_size, max(1, p.num_workers) if p.num_workers else local_world_size()).check()
    return cfg, args, extra


def local_world_size() -> int:
    """The processes of a local-mode run (``num_workers: 0``): one, or as many as torchrun started (its
    WORLD_SIZE; Ray Train's local mode joins them in one process group)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def is_rank_zero() -> bool:
    """Whether this process speaks for the run: always, but for the other ranks torchrun started."""
    return os.environ.get("RANK", "0") == "0"



def _quiet_placement_group_cleaner() -> None:
    """Worker setup when gristmill starts Ray itself, without its dashboard, on this machine:
    - Ray Train's placement-group cleaner asks the State API (served by the dashboard) about the
      controller every second and warns each time it cannot; the run is not affected (gristmill's
      Ray ends with the run);
    - the controller's autoscaling requests time out when the CPUs are busy training (a warning with
      a GetTimeoutError traceback, "safe to ignore" by its own words): a Ray started in-process has
      no autoscaler to ask;
    - with two such Rays on one machine (two runs at once), the cleaner's State API client looks for
      "the" local Ray, finds both, and its thread dies with a traceback: each worker is told its own
      cluster's address."""
    for name in ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
                 "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import ray

        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    except Exception as e:  # noqa: BLE001 - only a traceback in the log is at stake
        log.debug("could not tell the worker its cluster's address: %s", e)


def _start_autoscaling_coordinator() -> None:
    """Start, and wait for, the actor Ray Train's controller sends its resource requests to. Created
    on the controller's first request, while the CPUs are busy starting the run, it is often not up
    within the request's 5 s timeout, and the controller logs a GetTimeoutError traceback ("safe to
    ignore") into every run. Ray's internal API: if it changes, the warning may come back, nothing else."""
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote(), timeout=120)
    except Exception as e:  # noqa: BLE001 - only a warning is at stake
        log.debug("could not start Ray's autoscaling coordinator ahead of the run: %s", e)


def ensure_ray(p: LoopConfig) -> None:
    """Join the cluster of RAY_ADDRESS (``ray job submit``), or start a Ray in this process; no-op when
    Ray is up."""
    import ray

    if ray.is_initialized():
        return
    if not os.environ.get("RAY_ADDRESS"):
        # a Ray of our own keeps Ray's default for a new local cluster, token authentication, without
        # Ray's warning on every run that it is on (RAY_AUTH_MODE=token said explicitly is not the
        # same: Ray then makes no token for the new cluster and cannot connect to it)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if not os.environ.get("RAY_ADDRESS"):
        # Ray Train's preemption watcher (an actor per worker group) polls for node drains: a Ray of our own
        # is one node that lives as long as the run, with nothing to drain. Its constructor arguments go
        # through the object store, and with max_restarts set Ray's core worker prints an "E" line saying
        # so when the machine is busy (ray-project/ray#53727; gristmill issue 33): one process less, and no
        # error line that is not one. A user's explicit RAY_TRAIN_ENABLE_PREEMPTION_WATCHER wins.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    no_dashboard = not (p.local_dashboard or os.environ.get("RAY_ADDRESS"))
    quiet = {"worker_process_setup_hook": _quiet_placement_group_cleaner}
    ray.init(logging_level=logging.WARNING, log_to_driver=True,
             **({"include_dashboard": False, "runtime_env": quiet} if no_dashboard else {}))
    # ray.init installs a handler that aborts the process on SIGTERM (exit 134, a C++ stack dump): the
    # command's own handlers stop the run cleanly instead (gristmill.errors), and a Ray started here is
    # shut down before the process exits, so none of its processes is left behind
    reinstall_stop_handlers()
    if not os.environ.get("RAY_ADDRESS"):
        at_stop(ray.shutdown)
        _start_autoscaling_coordinator()


def run_training(cfg: GristmillConfig, task: str = "pretrain", progress: bool = False) -> TrainResult:
    """Launch the loop with Ray Train: on the cluster of RAY_ADDRESS (``ray job submit``), or a Ray started
    in-process."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t0 = time.time()
    if not is_rank_zero():  # under torchrun, rank 0 speaks for the run; the others only warn
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    cfg, args, extra = prepare(cfg, task)
    p = getattr(cfg, TASK_SECTIONS[task])
    run_dir = Path(p.storage_path) / p.name
    finished = _finished(run_dir, p.max_steps)
    if finished is not None:  # resubmitted after it ended: say so, start nothing
        state = ckpt.read_state(finished)
        log.info("%s is already complete at step %d (max_steps %d): nothing to train; its last checkpoint is %s",
                 run_dir, state["step"], p.max_steps, finished)
        return TrainResult(run_dir, finished, state.get("metrics") or {}, time.time() - t0)
    if not (p.use_gpu or p.peak_tflops or ray.is_initialized() or os.environ.get("RAY_ADDRESS")):
        threads = torch.get_num_threads() if p.num_workers == 0 else p.cpus_per_worker
        extra["cpu_peak"] = driver_cpu_peak(p, threads)
    local_mode = p.num_workers == 0
    if local_mode:
        # Ray Train's local mode runs the loop in this process and needs no cluster: starting one cost
        # every in-process run (the demo's SFT, the API's examples) seconds and a node's worth of processes.
        # Ray's own loggers stay at the level a started Ray would set (its INFO lines would say, per
        # checkpoint, what gristmill's lines already say)
        logging.getLogger("ray").setLevel(logging.WARNING)
    else:
        ensure_ray(p)
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
    # STORAGE_PATH/NAME/run.json says how the run ended (as a corpus's does): interrupted by SIGTERM with
    # 143, diverged with 3, ...; rank zero speaks for a torchrun group
    with recorded_run(str(run_dir), task) if is_rank_zero() else contextlib.nullcontext({}) as record:
        result = trainer.fit() if local_mode else _wait_interruptibly(trainer.fit)
        _check_diverged(run_dir, result)
        checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else ckpt.latest_checkpoint(run_dir)
        record.update(checkpoint=str(checkpoint) if checkpoint else None)
    return TrainResult(run_dir, checkpoint, result.metrics or {}, time.time() - t0)


#: how often a main thread that waits on other threads looks for a signal to handle
SIGNAL_POLL_SECONDS = 0.2


def _finished(run_dir: Path, max_steps: int) -> Path | None:
    """The run's final checkpoint when an earlier submission reached ``max_steps``, else None."""
    newest = ckpt.latest_checkpoint(run_dir) if run_dir.is_dir() else None  # sizes only: cheap
    if newest is None or ckpt.read_state(newest)["step"] < max_steps:
        return None  # not finished: resume() verifies what it resumes from
    return None if ckpt.verify(newest) else newest  # a damaged final checkpoint: train from an older one


def _wait_interruptibly(fn):
    """``fn()`` in a helper thread while the main thread waits for it. Ray Train's ``fit`` blocks the
    main thread in Ray's C++ ``get`` until training ends, and Python runs signal handlers only between
    bytecodes of the main thread: SIGTERM or Ctrl-C would wait for the whole run. An Event's wait is
    interrupted by them (gristmill.errors stops the run, shutting down a Ray started here)."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    box: dict = {}
    done = threading.Event()

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread as it is
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=target, name="gristmill-ray-train-fit", daemon=True).start()
    # with a timeout: the kernel may deliver the signal to another thread (Ray's), and then only the main
    # thread's next bytecode runs the handler; an endless wait would never return to one
    while not done.wait(SIGNAL_POLL_SECONDS):
        pass
    if "error" in box:
        raise box["error"]
    return box["result"]


def _check_diverged(run_dir: Path, result) -> None:
    diverged = run_dir / DIVERGED_FILE
    if diverged.exists():
        info = json.loads(diverged.read_text())
        last_good = info.get("last_good_checkpoint") or (result.checkpoint.path if result.checkpoint else None)
        raise TrainingDivergedError(f"{info['message']} ({last_good or 'no checkpoint was written before it'}); "
                                    "lower the learning rate, raise warmup_steps or check the data")
