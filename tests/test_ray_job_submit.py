"""`ray job submit` to a two-node Ray cluster the test builds (tests/raycluster.py), token authentication on (a
module of its own: make test's workers run it beside the others)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import training
from .conftest import REPO
from .raycluster import TwoNodeCluster, can_make_netns

pytestmark = pytest.mark.slow


@pytest.mark.skipif(can_make_netns() is not None, reason=str(can_make_netns()))
def test_ray_job_submit_on_a_two_node_cluster_with_token_auth(tmp_path, demo_tokens64):
    """`ray start --head` + a second node in a network namespace, token authentication on; the job is
    submitted with `ray job submit --working-dir .` and runs one training worker on each node, whose
    checkpoints land in the shared storage."""
    cluster = TwoNodeCluster()
    try:
        cluster.start()
        assert cluster.nodes_alive() == 2
        def cfg_file(steps: int) -> Path:
            tree = training.small_pretrain(tmp_path, "cluster", data=str(demo_tokens64), num_workers=2,
                                           placement_strategy="SPREAD", max_steps=steps, log_every=5, eval_every=10)
            tree["model"] = {"preset": "tiny"}  # the cluster is under test, not the model
            return training.write_config(tmp_path / f"cluster-{steps}.yaml", tree)

        def submit(config: Path) -> None:
            for _ in range(12):
                r = subprocess.run(
                    [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.address,
                     "--working-dir", str(REPO), "--",
                     "python", "-m", "gristmill.trainer.job", "--config", str(config)],
                    capture_output=True, text=True, timeout=400, env=cluster.env(),
                )
                # the head's job agent registers some seconds after `ray start` returns (longer on a busy
                # machine); until then Ray refuses the submission and says to try again later
                if "No available agent to submit job" not in r.stdout + r.stderr:
                    break
                time.sleep(5)
            assert r.returncode == 0 and "succeeded" in r.stdout + r.stderr, (r.stdout + r.stderr)[-5000:]

        submit(cfg_file(20))
        # (a run submitted again resumes from its newest complete checkpoint: tests/test_trainer_kill.py, whose
        # resubmission goes through the same Ray Train run as a job's does)
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
    m = training.metrics(run_dir)
    assert [x["step"] for x in m if "loss" in x] == [5, 10, 15, 20]
    assert not [x for x in m if x.get("event") == "resumed"]
    assert any("val_loss" in x for x in m)
