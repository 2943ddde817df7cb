"""Helpers of the training tests: config files, runs on the command line (plain, or killed at a state of
the run), and what a run leaves (metrics.jsonl, checkpoints).

Every config written here states ``peak_tflops`` for its training sections: MFU is then computed against a
given peak instead of the CPU matmul benchmark, which runs in one test only (test_trainer_unit)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import GRISTMILL, cli_env, kill_process_group

#: the peak FLOP/s (in TFLOP/s) test runs compute MFU against
TEST_PEAK_TFLOPS = 1.0
LOOP_SECTIONS = ("pretrain", "sft", "finetune_cls")


def write_config(path: Path, tree: dict) -> Path:
    """``tree`` as a YAML config file, with the tests' peak FLOP/s in every training section."""
    tree = {k: ({"peak_tflops": TEST_PEAK_TFLOPS, **v} if k in LOOP_SECTIONS else v) for k, v in tree.items()}
    path.write_text(yaml.safe_dump(tree))
    return path


def load(path: Path):
    """The typed config of a file :func:`write_config` wrote (for runs in this process)."""
    from gristmill.config import load_config

    return load_config(path)


def small_pretrain(tmp_path: Path, name: str, **pretrain) -> dict:
    """The small causal run most training tests use: the tiny preset (2 layers, width 64: a 40-step run takes a
    fifth of the small preset's time and still learns, loss 9.0 → 7.9), 40 steps of 16 rows of 64 tokens,
    checkpoints every 10 steps, validation at 20 and 40, in this process (Ray Train's local mode) unless told
    otherwise."""
    return {
        "model": {"preset": "tiny"},
        "pretrain": {"storage_path": str(tmp_path / "runs"), "name": name, "num_workers": 0, "batch_size": 16,
                     "micro_batch_size": 8, "max_steps": 40, "warmup_steps": 5, "log_every": 1, "eval_every": 20,
                     "eval_batches": 4, "checkpoint_every": 10, **pretrain},
    }


def cli(command: str, config: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``gristmill COMMAND --config CONFIG`` (pretrain, sft, finetune-cls) in a process of its own."""
    return subprocess.run([GRISTMILL, command, "--config", str(config), *extra], capture_output=True, text=True,
                          timeout=timeout, env=cli_env())


def torchrun(command: str, config: Path, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``gristmill COMMAND --config CONFIG`` in ``nproc`` processes started by torchrun (on loopback): Ray Train's
    local mode (``num_workers: 0``) joins them in one process group, no Ray cluster involved."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), "-m", "gristmill", command, "--config", str(config)], capture_output=True,
                          text=True, timeout=timeout, env=cli_env())


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def logged_steps(run_dir: Path) -> list[int]:
    return [m["step"] for m in metrics(run_dir) if "loss" in m]


def resumed_from(run_dir: Path) -> list[int]:
    """The step of every checkpoint the run resumed from, in order."""
    return [m["step"] for m in metrics(run_dir) if m.get("event") == "resumed"]


def final_weights(run_dir: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / f"checkpoint_{step:08d}" / "model.safetensors")


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def ray_registered_checkpoint(run_dir: Path) -> int:
    """Step of the newest checkpoint Ray Train's controller has registered (it learns of reports by polling
    the workers, so a checkpoint written a moment before a failure may not count yet)."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snap["latest_checkpoint_result"]["checkpoint_dir_name"].split("_")[1])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def start(command: str, config: Path) -> subprocess.Popen:
    """``gristmill COMMAND --config CONFIG`` in its own process group (so that it can be killed whole)."""
    return subprocess.Popen([GRISTMILL, command, "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env(), start_new_session=True)


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
    """Wait until ``ready()`` holds (a state of the run, polled), failing if the run ends first."""
    deadline = time.time() + timeout  # a bound on a hung run, not a timing
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached {what}")
        time.sleep(0.01)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run and everything it started, its Ray included: a crash. Ray starts its raylet and
    workers in sessions of their own, out of reach of the run's process group: each descendant is killed
    too, at once, so that none of them goes on writing (a worker outliving the kill for a moment once
    completed the next checkpoint)."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGSTOP)  # none of them acts (or forks) while the others are being killed
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    kill_process_group(proc)
    psutil.wait_procs(family, timeout=60)


def checkpoint_complete(run_dir: Path, step: int) -> bool:
    from gristmill.trainer import checkpoint as ckpt

    return ckpt.is_complete(run_dir / f"checkpoint_{step:08d}")


def run_card_snippet(export_dir: Path) -> str:
    """The Python snippet of an exported model card (README.md), run as written with PATH = ``export_dir``:
    what it prints. The card's own code under test: a user copies it."""
    import contextlib
    import io

    card = (export_dir / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace("PATH", repr(str(export_dir)))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "README.md", "exec"), {})  # noqa: S102 - the card's own code, under test
    return printed.getvalue()
