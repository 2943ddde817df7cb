"""The ablation's time estimate and its progress over all runs (trainer/ablation_time.py)."""

from __future__ import annotations

import json
import logging

import pytest

from gristmill.config import GristmillConfig
from gristmill.trainer import ablation_time


def test_the_estimate_is_waves_of_runs_plus_their_scored_tokens():
    measured = ablation_time.Probe(step_s=0.5, token_s=1e-4)
    e = ablation_time.estimate(measured, runs=10, parallel=4, max_steps=100, scored_tokens_per_run=30_000,
                               per_run_s=2.0)
    assert e.train_s == pytest.approx(3 * (100 * 0.5 + 2.0))  # 10 runs, 4 at once: 3 waves
    assert e.eval_s == pytest.approx(10 * 30_000 * 1e-4 / 4)
    assert e.total_s == pytest.approx(e.train_s + e.eval_s)
    # runs trained by an earlier invocation cost only their evaluation
    again = ablation_time.estimate(measured, runs=10, parallel=4, max_steps=100, scored_tokens_per_run=30_000,
                                   runs_to_train=0, per_run_s=2.0)
    assert again.train_s == 0 and again.eval_s == e.eval_s
    assert ablation_time.estimate(None, 10, 4, 100, 1) is None


@pytest.mark.parametrize("seconds, text", [(4.4, "4 s"), (250, "4 min 10 s"), (7500, "2 h 05 min")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert ablation_time.duration(seconds) == text


def test_a_step_and_a_scored_token_are_timed_on_this_machine_and_not_for_gpu_runs():
    cfg = GristmillConfig.model_validate({"model": {"preset": "tiny"}, "tokenize": {"seq_len": 32},
                                          "pretrain": {"batch_size": 4, "micro_batch_size": 2}})
    measured = ablation_time.probe(cfg, vocab_size=500, threads=1, steps=2)
    assert measured.step_s > 0 and measured.token_s > 0  # measured, not guessed (no bound: machines are noisy)
    gpu = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"use_gpu": True})})
    assert ablation_time.probe(gpu, vocab_size=500, threads=1) is None


def _log(run_dir, *steps, partial: str = ""):
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "metrics.jsonl").open("a") as f:
        for s in steps:
            f.write(json.dumps({"step": s, "loss": 5.0}) + "\n")
        f.write(partial)


def test_progress_counts_every_runs_steps_from_their_metrics(tmp_path, caplog):
    runs = [tmp_path / f"r{i}" for i in range(3)]
    _log(runs[0], 10, 20)  # an earlier invocation's steps: not this invocation's rate
    progress = ablation_time.RunsProgress(runs, max_steps=20, estimate_s=600.0, bar=False, log_every=1e9)
    assert progress.total == 60 and progress.steps_done() == 20
    assert "20/60 training steps (33 %)" in progress.line(20) and "ETA 6 min 40 s" in progress.line(20)
    _log(runs[1], 5, 10, partial='{"step": 1')  # a line being written is not read as a step
    assert ablation_time.last_step(runs[1]) == 10 and ablation_time.last_step(runs[2]) == 0
    assert progress.steps_done() == 30
    with caplog.at_level(logging.INFO, logger="gristmill.ablate"):
        progress.run_finished("r0")
    assert "run r0 evaluated; ablation: 30/60 training steps (50 %), 1/3 runs evaluated, ETA" in caplog.text
    _log(runs[2], 999)  # a step past max_steps (a resumed run's log) counts as the run's whole budget
    assert progress.steps_done() == 50
