"""End to end: pretraining on real token shards (the sample crawl through corpus → tokenizer → tokenize)
with a real Ray: in-process, with two workers surviving a killed worker, and submitted with
``ray job submit`` to a two-node cluster the test builds (tests/raycluster.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from .conftest import GRISTMILL, REPO, cli_env
from .raycluster import TwoNodeCluster, can_make_netns

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def tokens(demo_tokens64):
    return demo_tokens64


def _config(tmp_path: Path, tokens: Path, name: str, **pretrain) -> Path:
    tree = {
        "model": {"preset": "small"},
        "pretrain": {"data": str(tokens), "storage_path": str(tmp_path / "runs"), "name": name, "num_workers": 0,
                     "batch_size": 16, "micro_batch_size": 8, "max_steps": 40, "warmup_steps": 5, "log_every": 1,
                     "eval_every": 20, "eval_batches": 4, "checkpoint_every": 10, **pretrain},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _pretrain(config: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([GRISTMILL, "pretrain", "--config", str(config)], capture_output=True, text=True,
                          timeout=timeout, env=cli_env())


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _final_weights(run_dir: Path, step: int):
    return load_file(run_dir / f"checkpoint_{step:08d}" / "model.safetensors")


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _ray_registered_checkpoint(run_dir: Path) -> int:
    """Step of the newest checkpoint Ray Train's controller has registered (it learns of reports by polling
    the workers, so a checkpoint written a moment before a failure may not count yet)."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snap["latest_checkpoint_result"]["checkpoint_dir_name"].split("_")[1])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _run_and_kill(config: Path, run_dir: Path, after_step: int, kill, ray_checkpoint: bool = False) -> subprocess.Popen:
    """Start a run, wait until it has logged ``after_step`` past a checkpoint, then call ``kill(proc)``."""
    proc = subprocess.Popen([GRISTMILL, "pretrain", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env(), start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = [m["step"] for m in _metrics(run_dir) if "loss" in m]
        saved = _ray_registered_checkpoint(run_dir) if ray_checkpoint else 10
        if steps and saved and steps[-1] >= max(after_step, saved + 2):
            kill(proc)
            return proc
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the run never reached the step to interrupt at")


def test_local_run_learns_and_a_resubmitted_run_resumes_exactly(tmp_path, tokens):
    ref = _pretrain(_config(tmp_path, tokens, "whole"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    whole = tmp_path / "runs" / "whole"
    losses = [m["loss"] for m in _metrics(whole) if "loss" in m]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses  # it learns
    vals = [m["val_loss"] for m in _metrics(whole) if "val_loss" in m]
    assert len(vals) == 2 and vals[1] < vals[0]
    assert "val loss" in ref.stdout and "checkpoint_00000040" in ref.stdout

    # the same run killed (driver and its Ray) after its step-10 checkpoint, then submitted again
    cfg = _config(tmp_path, tokens, "crashed")
    run_dir = tmp_path / "runs" / "crashed"
    proc = _run_and_kill(cfg, run_dir, 12, lambda p: os.killpg(p.pid, signal.SIGKILL))
    proc.wait(timeout=60)
    again = _pretrain(cfg)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [m for m in _metrics(run_dir) if m.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 10
    steps = [m["step"] for m in _metrics(run_dir) if "loss" in m]
    assert steps == list(range(1, 41))  # the log reads as one run: nothing repeated, nothing skipped
    assert _max_abs_diff(_final_weights(whole, 40), _final_weights(run_dir, 40)) <= 1e-6


def test_a_run_killed_right_after_a_checkpoint_resumes_from_it(tmp_path, tokens):
    """One Ray Train worker; the run is killed the moment its step-20 checkpoint is complete in storage,
    before Ray Train's controller has (necessarily) recorded it. Submitted again, it resumes from step 20,
    not from the checkpoint the controller recorded, and ends with the weights of an uninterrupted run."""
    from gristmill.trainer import checkpoint as ckpt

    ref = _pretrain(_config(tmp_path, tokens, "whole", num_workers=1))
    assert ref.returncode == 0, ref.stderr[-3000:]
    cfg = _config(tmp_path, tokens, "cut", num_workers=1)
    run_dir = tmp_path / "runs" / "cut"
    proc = subprocess.Popen([GRISTMILL, "pretrain", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env(), start_new_session=True)
    deadline = time.time() + 240
    while not ckpt.is_complete(run_dir / "checkpoint_00000020"):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the run never wrote its step-20 checkpoint:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    again = _pretrain(cfg)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [m for m in _metrics(run_dir) if m.get("event") == "resumed"]
    assert [m["step"] for m in resumed] == [20], resumed
    assert [m["step"] for m in _metrics(run_dir) if "loss" in m] == list(range(1, 41))
    assert _max_abs_diff(_final_weights(tmp_path / "runs" / "whole", 40), _final_weights(run_dir, 40)) <= 1e-6


def test_two_ray_workers_survive_a_killed_worker_with_identical_weights(tmp_path, tokens):
    """DDP over gloo with two Ray Train workers; one worker process is SIGKILLed mid-run; Ray Train restarts the
    group, which resumes from the last reported checkpoint and ends with the weights of an uninterrupted run."""
    ref = _pretrain(_config(tmp_path, tokens, "whole", num_workers=2, max_failures=2))
    assert ref.returncode == 0, ref.stderr[-3000:]
    whole = tmp_path / "runs" / "whole"
    workers = {json.loads(p.read_text())["rank"] for p in (whole / "workers").glob("rank*.json")}
    assert workers == {0, 1}

    cfg = _config(tmp_path, tokens, "killed", num_workers=2, max_failures=2)
    run_dir = tmp_path / "runs" / "killed"

    def kill_rank1(proc):
        pid = json.loads((run_dir / "workers" / "rank1.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)

    proc = _run_and_kill(cfg, run_dir, 13, kill_rank1, ray_checkpoint=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    resumed = [m for m in _metrics(run_dir) if m.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 10, out[-3000:]
    assert [m["step"] for m in _metrics(run_dir) if "loss" in m] == list(range(1, 41))
    assert _max_abs_diff(_final_weights(whole, 40), _final_weights(run_dir, 40)) <= 1e-6


def test_fsdp_trains_like_ddp_and_its_checkpoint_is_the_full_model(tmp_path, tokens):
    """FSDP2 over gloo (CPU) shards parameters and optimizer state over the two workers; with the same data
    it follows DDP's losses and saves unsharded weights. Reductions run in another order, so the runs are not
    bit for bit equal, and at this learning rate the difference grows after ~10 steps (measured: equal to
    4 decimals for 10 steps, 0.09 apart by step 20): the comparison is over the first 10."""
    runs = {}
    for parallel in ("ddp", "fsdp"):
        r = _pretrain(_config(tmp_path, tokens, parallel, num_workers=2, parallel=parallel, max_steps=10,
                              checkpoint_every=10, eval_every=10))
        assert r.returncode == 0, r.stderr[-3000:]
        runs[parallel] = tmp_path / "runs" / parallel
    losses = {k: [m["loss"] for m in _metrics(v) if "loss" in m] for k, v in runs.items()}
    assert len(losses["fsdp"]) == 10
    assert max(abs(a - b) for a, b in zip(losses["ddp"], losses["fsdp"])) < 2e-3
    ddp, fsdp = _final_weights(runs["ddp"], 10), _final_weights(runs["fsdp"], 10)
    assert {k: v.shape for k, v in ddp.items()} == {k: v.shape for k, v in fsdp.items()}
    assert _max_abs_diff(ddp, fsdp) < 1e-3  # measured 3.9e-5
    assert max(float((ddp[k] - fsdp[k]).abs().mean()) for k in ddp) < 1e-5  # measured 6.1e-7


def test_a_compiled_run_trains_like_an_eager_one(tmp_path, tokens):
    # torch.compile takes the model and its loss as one function (trainer/loop.py): same losses, same validation
    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        r = _pretrain(_config(tmp_path, tokens, name, compile=compile_, max_steps=4, eval_every=4, checkpoint_every=4))
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = _metrics(tmp_path / "runs" / name)
    eager, compiled = ([m["loss"] for m in runs[n] if "loss" in m] for n in ("eager", "compiled"))
    assert len(eager) == len(compiled) == 4
    assert all(abs(a - b) <= 1e-3 * abs(a) for a, b in zip(eager, compiled, strict=True)), (eager, compiled)
    val = [next(m["val_loss"] for m in runs[n] if "val_loss" in m) for n in ("eager", "compiled")]
    assert abs(val[0] - val[1]) <= 1e-3 * val[0], val


def test_a_nan_loss_or_gradient_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tokens):
    # an absurd learning rate: the first step is finite, the weights then overflow
    cfg = _config(tmp_path, tokens, "nan", lr=1e30, min_lr=0.0, warmup_steps=0, checkpoint_every=1, max_steps=20)
    r = _pretrain(cfg)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "training diverged" in r.stderr and "last good checkpoint" in r.stderr
    run_dir = tmp_path / "runs" / "nan"
    info = json.loads((run_dir / "DIVERGED.json").read_text())
    kept = sorted(run_dir.glob("checkpoint_*"))
    assert kept and int(kept[-1].name.split("_")[1]) == info["step"] - 1
    weights = load_file(kept[-1] / "model.safetensors")
    assert all(bool(v.isfinite().all()) for v in weights.values())
    assert info["last_good_checkpoint"] == str(kept[-1])


@pytest.mark.skipif(can_make_netns() is not None, reason=str(can_make_netns()))
def test_ray_job_submit_on_a_two_node_cluster_with_token_auth(tmp_path, tokens):
    """`ray start --head` + a second node in a network namespace, token authentication on; the job is
    submitted with `ray job submit --working-dir .` and runs one training worker on each node."""
    cluster = TwoNodeCluster()
    try:
        cluster.start()
        assert cluster.nodes_alive() == 2
        cfg = _config(tmp_path, tokens, "cluster", num_workers=2, placement_strategy="SPREAD", max_steps=20,
                      checkpoint_every=10, log_every=5, eval_every=10)
        def submit(config: Path) -> None:
            for _ in range(12):
                r = subprocess.run(
                    [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.address,
                     "--working-dir", str(REPO), "--",
                     "python", "-m", "gristmill.trainer.pretrain", "--config", str(config)],
                    capture_output=True, text=True, timeout=400, env=cluster.env(),
                )
                # the head's job agent registers some seconds after `ray start` returns (longer on a busy
                # machine); until then Ray refuses the submission and says to try again later
                if "No available agent to submit job" not in r.stdout + r.stderr:
                    break
                time.sleep(5)
            assert r.returncode == 0 and "succeeded" in r.stdout + r.stderr, (r.stdout + r.stderr)[-5000:]

        submit(cfg)
        # the same run submitted again (here with more steps) resumes from the checkpoint Ray Train recorded
        submit(_config(tmp_path, tokens, "cluster", num_workers=2, placement_strategy="SPREAD", max_steps=25,
                       checkpoint_every=10, log_every=5, eval_every=10))
        # without the token the dashboard refuses the submission
        denied = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "list", "--address", cluster.address],
            capture_output=True, text=True, timeout=120, env={**cluster.env(), "RAY_AUTH_TOKEN": "0" * 64},
        )
        assert denied.returncode != 0
    finally:
        cluster.stop()
    run_dir = tmp_path / "runs" / "cluster"
    ips = {json.loads(p.read_text())["ip"] for p in (run_dir / "workers").glob("rank*.json")}
    assert ips == {cluster.head_ip, cluster.node_ip}  # one worker per node
    assert (run_dir / "checkpoint_00000020" / "model.safetensors").is_file()
    assert (run_dir / "checkpoint_00000025" / "model.safetensors").is_file()
    m = _metrics(run_dir)
    assert [x["step"] for x in m if "loss" in x] == [5, 10, 15, 20, 25]
    assert [x["checkpoint"].rsplit("/", 1)[-1] for x in m if x.get("event") == "resumed"] == ["checkpoint_00000020"]
    assert any("val_loss" in x for x in m)
