"""End to end: pretraining on real token shards (the sample crawl through corpus → tokenizer → tokenize):
in this process (Ray Train's local mode), with a Ray Train worker killed with its whole run and resubmitted,
DDP and FSDP in two processes under torchrun (local mode, no Ray cluster), two Ray Train workers surviving a
killed worker, and submitted with ``ray job submit`` to a two-node cluster the test builds
(tests/raycluster.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import training
from .conftest import REPO, group_left_behind, mixture_tree, signal_stopped
from .raycluster import TwoNodeCluster, can_make_netns

pytestmark = pytest.mark.slow


def test_a_local_run_learns_validates_and_logs_every_step(pretrained_run):
    """The session's reference run (40 steps in this process): it learns, on training and held-out rows."""
    records = training.metrics(pretrained_run)
    losses = [m["loss"] for m in records if "loss" in m]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses  # it learns
    vals = [m["val_loss"] for m in records if "val_loss" in m]
    assert len(vals) == 2 and vals[1] < vals[0]
    start = next(m for m in records if m.get("event") == "start")
    assert start["peak_source"] == "config" and start["peak_flops"] == training.TEST_PEAK_TFLOPS * 1e12
    assert all(0 < m["mfu"] <= 1 for m in records if "loss" in m)
    assert {p.name for p in pretrained_run.glob("checkpoint_*")} == {f"checkpoint_{s:08d}" for s in (20, 30, 40)}


@pytest.mark.xdist_group("trainer_kill")  # apart from its module's other tests (make test's workers)
def test_a_killed_run_resubmitted_resumes_exactly(mixture_run, mixture_sources, tmp_path):
    """The crash a scheduler sees, on a Ray Train worker and a two-source mixture (whose data position must
    resume too): the run and its Ray SIGKILLed the moment its step-20 checkpoint is complete in storage, before
    Ray Train's controller has (necessarily) recorded it. Submitted again, it resumes from step 20, not from
    the checkpoint the controller recorded; stopped by SIGTERM, it stops cleanly; submitted a third time, its
    log reads as one run (nothing repeated, nothing skipped) and it ends with the weights of the uninterrupted
    run (trained in this process: Ray Train's local mode and one Ray Train worker compute the same). A run
    restarted after steps it had logged past its checkpoint: the worker-kill test below."""
    cfg = training.write_config(tmp_path / "cut.yaml", mixture_tree(tmp_path, mixture_sources, "cut", num_workers=1))
    run_dir = tmp_path / "runs" / "cut"

    proc = training.start("pretrain", cfg)
    training.wait_for(proc, lambda: training.checkpoint_complete(run_dir, 20), "its step-20 checkpoint")
    training.kill_group(proc)
    assert not training.checkpoint_complete(run_dir, 30)

    # submitted again, on Ray; then stopped as a scheduler stops a job (SIGTERM), once it has resumed: it stops
    # at once (ray.init's own handler would abort it with a stack dump), its Ray shut down, no process left
    proc = training.start("pretrain", cfg)
    training.wait_for(proc, lambda: bool(training.resumed_from(run_dir)), "its resumption")
    signal_stopped(proc, signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]  # a hang guard: a stopped run exits in about a second
    assert proc.returncode == 143, out[-3000:]
    assert not group_left_behind(proc.pid)
    assert training.resumed_from(run_dir) == [20]  # not the checkpoint Ray Train's controller recorded
    assert "interrupted by SIGTERM: stopped" in out and "tokens available" in out
    # on a busy machine (make test's other worker) Ray printed a harmless "E ... core_worker.cc" line (issue 33)
    assert "Traceback" not in out and "core_worker.cc" not in out and "SIGTERM received" not in out, out[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["exit_code"] == 143

    # and once more, in Ray Train's local mode (it computes what one Ray Train worker does): from the newest
    # complete checkpoint to the end, a log that reads as one run, the weights of the uninterrupted run
    again = training.cli("pretrain", cfg, "--set", "pretrain.num_workers=0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "val loss" in again.stdout + again.stderr and "checkpoint_00000040" in again.stdout
    assert len(training.resumed_from(run_dir)) == 2 and training.resumed_from(run_dir)[1] >= 20
    assert training.logged_steps(run_dir) == list(range(1, 41))
    assert training.max_abs_diff(training.final_weights(mixture_run, 40), training.final_weights(run_dir, 40)) <= 1e-6
    assert json.loads((run_dir / "run.json").read_text())["status"] == "succeeded"


@pytest.fixture(scope="module")
def ddp_run(demo_tokens64, tmp_path_factory) -> Path:
    """30 steps of DDP over gloo in two processes started by torchrun (Ray Train's local mode, no Ray
    cluster): the reference of the FSDP and worker-kill tests."""
    root = tmp_path_factory.mktemp("ddp")
    cfg = training.write_config(root / "ddp.yaml", _two_ranks(root, demo_tokens64, "ddp"))
    r = training.torchrun("pretrain", cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count("checkpoint: ") == 1  # rank 0 speaks for the run
    run = root / "runs" / "ddp"
    workers = [json.loads(p.read_text()) for p in sorted((run / "workers").glob("rank*.json"))]
    assert [(w["rank"], w["world"]) for w in workers] == [(0, 2), (1, 2)]
    assert len({w["pid"] for w in workers}) == 2
    return run


def _two_ranks(root: Path, tokens: Path, name: str, **pretrain) -> dict:
    return training.small_pretrain(root, name, data=str(tokens), max_failures=2, max_steps=30, eval_every=10,
                                   **pretrain)


def test_two_ray_workers_survive_a_killed_worker_with_identical_weights(ddp_run, demo_tokens64, tmp_path):
    """DDP with two Ray Train workers; one worker process is SIGKILLed mid-run; Ray Train restarts the group,
    which resumes from the last reported checkpoint and ends with the weights of an uninterrupted run (the
    torchrun one: Ray Train workers and local mode compute the same)."""
    cfg = training.write_config(tmp_path / "killed.yaml", _two_ranks(tmp_path, demo_tokens64, "killed",
                                                                       num_workers=2))
    run_dir = tmp_path / "runs" / "killed"
    proc = training.start("pretrain", cfg)
    # past a checkpoint the controller has registered (the group restarts from what it recorded)
    training.wait_for(proc, lambda: (saved := training.ray_registered_checkpoint(run_dir)) and max(
        training.logged_steps(run_dir), default=0) >= max(13, saved + 2), "two steps past a registered checkpoint")
    os.kill(json.loads((run_dir / "workers" / "rank1.json").read_text())["pid"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    # Ray's own reports of a real failure still reach the user (only a known harmless line is avoided)
    assert "A worker died or was killed" in out and "ActorDiedError" in out, out[-4000:]
    assert {json.loads(p.read_text())["rank"] for p in (run_dir / "workers").glob("rank*.json")} == {0, 1}
    resumed = training.resumed_from(run_dir)
    assert len(resumed) == 1 and resumed[0] >= 10, out[-3000:]
    assert training.logged_steps(run_dir) == list(range(1, 31))  # the steps the group repeated are logged once
    assert training.max_abs_diff(training.final_weights(ddp_run, 30), training.final_weights(run_dir, 30)) <= 1e-6


def test_fsdp_trains_like_ddp_and_its_checkpoint_is_the_full_model(ddp_run, demo_tokens64, tmp_path):
    """FSDP2 over gloo (CPU) shards parameters and optimizer state over the two ranks; with the same data
    it follows DDP's losses and saves unsharded weights. Reductions run in another order, so the runs are not
    bit for bit equal, and at this learning rate the difference grows after ~10 steps (measured: equal to
    4 decimals for 10 steps, 0.09 apart by step 20): the comparison is over the first 10."""
    cfg = training.write_config(tmp_path / "fsdp.yaml", _two_ranks(tmp_path, demo_tokens64, "fsdp", parallel="fsdp"))
    r = training.torchrun("pretrain", cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    fsdp_run = tmp_path / "runs" / "fsdp"
    losses = {k: [m["loss"] for m in training.metrics(v) if "loss" in m][:10]
              for k, v in (("ddp", ddp_run), ("fsdp", fsdp_run))}
    assert len(losses["fsdp"]) == len(losses["ddp"]) == 10
    assert max(abs(a - b) for a, b in zip(losses["ddp"], losses["fsdp"])) < 2e-3
    ddp, fsdp = training.final_weights(ddp_run, 10), training.final_weights(fsdp_run, 10)
    assert {k: v.shape for k, v in ddp.items()} == {k: v.shape for k, v in fsdp.items()}
    assert training.max_abs_diff(ddp, fsdp) < 1e-3  # measured 3.9e-5
    assert max(float((ddp[k] - fsdp[k]).abs().mean()) for k in ddp) < 1e-5  # measured 6.1e-7


def test_a_compiled_run_trains_like_an_eager_one(demo_tokens64, tmp_path):
    """torch.compile takes the model and its loss as one function (trainer/loop.py): same losses, same
    validation. The compiled run in a process of its own (its compile workers end with it)."""
    from gristmill import api

    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        tree = training.small_pretrain(tmp_path, name, data=str(demo_tokens64), compile=compile_, max_steps=4,
                                       eval_every=4, checkpoint_every=4)
        cfg = training.write_config(tmp_path / f"{name}.yaml", tree)
        if compile_:
            r = training.cli("pretrain", cfg)
            assert r.returncode == 0, r.stderr[-3000:]
        else:
            import ray

            api.pretrain(training.load(cfg))
            assert not ray.is_initialized()  # local mode starts no Ray
        runs[name] = training.metrics(tmp_path / "runs" / name)
    eager, compiled = ([m["loss"] for m in runs[n] if "loss" in m] for n in ("eager", "compiled"))
    assert len(eager) == len(compiled) == 4
    assert all(abs(a - b) <= 1e-3 * abs(a) for a, b in zip(eager, compiled, strict=True)), (eager, compiled)
    val = [next(m["val_loss"] for m in runs[n] if "val_loss" in m) for n in ("eager", "compiled")]
    assert abs(val[0] - val[1]) <= 1e-3 * val[0], val


def test_a_nan_loss_or_gradient_stops_the_run_and_keeps_the_last_good_checkpoint(demo_tokens64, tmp_path):
    # an absurd learning rate: the first step is finite, the weights then overflow
    tree = training.small_pretrain(tmp_path, "nan", data=str(demo_tokens64), lr=1e30, min_lr=0.0, warmup_steps=0,
                                   checkpoint_every=1, max_steps=20)
    r = training.cli("pretrain", training.write_config(tmp_path / "nan.yaml", tree))
    assert r.returncode == 3, r.stderr[-3000:]
    assert "training diverged" in r.stderr and "last good checkpoint" in r.stderr
    run_dir = tmp_path / "runs" / "nan"
    info = json.loads((run_dir / "DIVERGED.json").read_text())
    kept = sorted(run_dir.glob("checkpoint_*"))
    assert kept and int(kept[-1].name.split("_")[1]) == info["step"] - 1
    weights = training.final_weights(run_dir, info["step"] - 1)
    assert all(bool(v.isfinite().all()) for v in weights.values())
    assert info["last_good_checkpoint"] == str(kept[-1])


@pytest.mark.xdist_group("ray_job_submit")  # apart from its module's other tests (make test's workers)
@pytest.mark.skipif(can_make_netns() is not None, reason=str(can_make_netns()))
def test_ray_job_submit_on_a_two_node_cluster_with_token_auth(tmp_path, demo_tokens64):
    """`ray start --head` + a second node in a network namespace, token authentication on; the job is
    submitted with `ray job submit --working-dir .` and runs one training worker on each node."""
    cluster = TwoNodeCluster()
    try:
        cluster.start()
        assert cluster.nodes_alive() == 2
        def cfg_file(steps: int) -> Path:
            tree = training.small_pretrain(tmp_path, "cluster", data=str(demo_tokens64), num_workers=2,
                                           placement_strategy="SPREAD", max_steps=steps, log_every=5, eval_every=10)
            return training.write_config(tmp_path / f"cluster-{steps}.yaml", tree)

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

        submit(cfg_file(20))
        # the same run submitted again (here with more steps) resumes from the checkpoint Ray Train recorded
        submit(cfg_file(25))
        # without the token the dashboard refuses the submission
        denied = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "list", "--address", cluster.address],
            capture_output=True, text=True, timeout=120, env={**cluster.env(), "RAY_AUTH_TOKEN": "0" * 64},
        )
        assert denied.returncode != 0
    finally:
        cluster.stop()
    assert cluster._our_pids() == []  # nothing of the cluster left running (its agents would hold ports)
    run_dir = tmp_path / "runs" / "cluster"
    ips = {json.loads(p.read_text())["ip"] for p in (run_dir / "workers").glob("rank*.json")}
    assert ips == {cluster.head_ip, cluster.node_ip}  # one worker per node
    assert (run_dir / "checkpoint_00000020" / "model.safetensors").is_file()
    assert (run_dir / "checkpoint_00000025" / "model.safetensors").is_file()
    m = training.metrics(run_dir)
    assert [x["step"] for x in m if "loss" in x] == [5, 10, 15, 20, 25]
    assert [x["checkpoint"].rsplit("/", 1)[-1] for x in m if x.get("event") == "resumed"] == ["checkpoint_00000020"]
    assert any("val_loss" in x for x in m)
