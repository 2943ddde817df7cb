"""The crash and the stop a scheduler causes, on Ray: a training run SIGKILLed with its Ray and resubmitted, then
stopped by SIGTERM and submitted once more (a module of its own: make test's workers run it beside the others)."""

from __future__ import annotations

import json
import signal

import pytest

from . import training
from .conftest import busy_machine, group_left_behind, mixture_tree, signal_stopped

pytestmark = pytest.mark.slow


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

    # submitted again, on Ray, with every core busy (issue 33: Ray printed a harmless "E ... core_worker.cc"
    # line only under load); then stopped as a scheduler stops a job (SIGTERM), once it has resumed: it stops
    # at once (ray.init's own handler would abort it with a stack dump), its Ray shut down, no process left
    with busy_machine():
        proc = training.start("pretrain", cfg)
        training.wait_for(proc, lambda: bool(training.resumed_from(run_dir)), "its resumption")
    signal_stopped(proc, signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]  # a hang guard: a stopped run exits in about a second
    assert proc.returncode == 143, out[-3000:]
    assert not group_left_behind(proc.pid)
    assert training.resumed_from(run_dir) == [20]  # not the checkpoint Ray Train's controller recorded
    assert "interrupted by SIGTERM: stopped" in out and "tokens available" in out
    # no error line of Ray's own under load; a real one still reaches the user (test_trainer_e2e: a killed worker)
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
    # the default optimizer, so this is Muon's state resumed exactly after a kill (issue 32)
    assert json.loads((run_dir / "checkpoint_00000040" / "trainer_state.json").read_text())["optimizer"] == "muon"
