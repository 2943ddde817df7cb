"""How long an ablation will take, said before it starts, and its progress over all runs while it trains.

An ablation is variants × seeds training runs; a data team launching one wants to know whether it is a
coffee or a night. :func:`probe` times a few optimizer steps of the ablation's model with the runs'
batch layout and threads on this machine, and its scoring of held-out tokens (seconds of probing, not a
guess from FLOPs: a small model's CPU step is dominated by overheads no FLOP count sees);
:func:`estimate` turns them into the time of the whole plan. :class:`RunsProgress` then follows every
run's ``metrics.jsonl`` (what the training loop writes as it goes) from a driver thread — a progress bar
with ETA on a terminal, else a log line per finished run and at most one a minute — whether the runs
train in this process or on a Ray cluster that shares the run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gristmill.format import duration

log = logging.getLogger("gristmill.ablate")


@dataclass(frozen=True)
class Probe:
    step_s: float  # one optimizer step of the runs' batch
    token_s: float  # scoring one held-out token (forward only, the evaluation's batches)


def probe(cfg, vocab_size: int, threads: int, steps: int = 3) -> Probe | None:
    """Seconds of one optimizer step of ``cfg.model`` (pretrain's batch, micro-batch and seq_len) on this
    machine's CPU with ``threads`` threads — the mean of ``steps`` steps after a warm-up one — and of scoring
    one held-out token as the evaluation does (batches of 8 windows, logits in fp32). None where the runs
    train on GPUs (the driver's CPU says nothing of them)."""
    import torch
    import torch.nn.functional as F

    from gristmill.trainer.model import build_model, resolve_model_args

    p, seq_len = cfg.pretrain, cfg.tokenize.seq_len
    if p.use_gpu:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        gen = torch.Generator().manual_seed(0)
        model = build_model(resolve_model_args(cfg.model, vocab_size, seq_len))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        micro = min(p.micro_batch_size or p.batch_size, p.batch_size)
        accum = max(1, math.ceil(p.batch_size / micro))
        x = torch.randint(0, vocab_size, (micro, seq_len + 1), generator=gen)
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            for _ in range(accum):
                logits = model(x[:, :-1])
                loss = F.cross_entropy(logits[..., :vocab_size].reshape(-1, vocab_size).float(), x[:, 1:].reshape(-1))
                (loss / accum).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        rows = torch.randint(0, vocab_size, (8, seq_len + 1), generator=gen)
        model.eval()
        forward = []
        with torch.no_grad():
            for _ in range(steps + 1):
                t0 = time.perf_counter()
                logits = model(rows[:, :-1]).float()
                F.cross_entropy(logits.transpose(1, 2), rows[:, 1:], reduction="sum")
                forward.append(time.perf_counter() - t0)
        return Probe(sum(times[1:]) / steps, sum(forward[1:]) / steps / rows[:, 1:].numel())
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Estimate:
    train_s: float  # every run's steps, runs going ``parallel`` at once
    eval_s: float  # every checkpoint's forward passes over the held-out tokens
    step_s: float

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s


#: a run's cost besides its steps — starting it, writing and reading back its checkpoints — measured on the
#: 2-core development machine (tests/test_ablate.py's tiny ablation: 11.4 s for 4 runs whose steps and
#: evaluation take 1.9 s; a Ray task's first run also starts its worker process; a Ray Train run starts a
#: controller, a worker group and a placement group)
RUN_OVERHEAD_S = {"local": 2.5, "ray_task": 4.0, "ray_train": 10.0}


def estimate(measured: Probe | None, runs: int, parallel: int, max_steps: int, scored_tokens_per_run: float,
             runs_to_train: int | None = None, per_run_s: float = 0.0) -> Estimate | None:
    """The plan's time from the probe's: the runs still to train (``runs_to_train``, default all) in waves of
    ``parallel``, each wave also paying ``per_run_s``; then every run's held-out tokens scored."""
    if measured is None:
        return None
    waves = math.ceil((runs if runs_to_train is None else runs_to_train) / max(1, parallel))
    train = waves * (max_steps * measured.step_s + per_run_s)
    evaluation = runs * scored_tokens_per_run * measured.token_s
    return Estimate(train, evaluation / max(1, parallel), measured.step_s)


def last_step(run_dir: Path) -> int:
    """The last step a run's metrics.jsonl records (0 before its first line)."""
    path = run_dir / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        with contextlib.suppress(ValueError, AttributeError):
            return int(json.loads(line).get("step", 0))
    return 0


class RunsProgress:
    """Training steps done over every run of the ablation, from the runs' metrics files: a tqdm bar with
    ETA (``bar=True``), else log lines. :meth:`run_finished` is called as each run's evaluation ends."""

    def __init__(self, run_dirs: list[Path], max_steps: int, estimate_s: float | None, bar: bool,
                 interval: float = 2.0, log_every: float = 60.0):
        self.run_dirs, self.max_steps, self.estimate_s = run_dirs, max_steps, estimate_s
        self.total = len(run_dirs) * max_steps
        self.interval, self.log_every = interval, log_every
        self.finished = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._start_done = self.steps_done()
        self._t0 = time.monotonic()
        self._last_log = self._t0
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self._start_done, desc="ablation runs", unit="step",
                             leave=False, dynamic_ncols=True)

    def steps_done(self) -> int:
        return sum(min(self.max_steps, last_step(d)) for d in self.run_dirs)

    def eta_s(self, done: int) -> float | None:
        """Seconds left: from the rate since the start once steps were made here, else the estimate."""
        made = done - self._start_done
        if made > 0:
            return (time.monotonic() - self._t0) / made * (self.total - done)
        if self.estimate_s is not None and self.total:
            return self.estimate_s * (self.total - done) / self.total
        return None

    def line(self, done: int) -> str:
        eta = self.eta_s(done)
        return (f"ablation: {done:,}/{self.total:,} training steps ({100 * done / max(1, self.total):.0f} %), "
                f"{self.finished}/{len(self.run_dirs)} runs evaluated, "
                + (f"ETA {duration(eta)}" if eta is not None else "ETA after the first steps"))

    def update(self) -> None:
        done = self.steps_done()
        with self._lock:
            if self._bar is not None:
                self._bar.n = done
                self._bar.set_postfix_str(f"{self.finished}/{len(self.run_dirs)} runs")
            elif time.monotonic() - self._last_log >= self.log_every:
                self._last_log = time.monotonic()
                log.info("%s", self.line(done))

    def run_finished(self, name: str) -> None:
        with self._lock:
            self.finished += 1
            self._last_log = time.monotonic()
        log.info("run %s evaluated; %s", name, self.line(self.steps_done()))
        self.update()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()

    def __enter__(self) -> RunsProgress:
        self._thread = threading.Thread(target=self._loop, name="ablation-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()
