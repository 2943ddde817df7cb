"""Several small models in one process (``ablate.runs_per_process``): runs of one worker trained in threads of
one process without Ray Train (trainer/launch.train_in_this_thread), each then evaluated in its thread. On a GPU
they share one process and CUDA context; here, on CPUs, the same code path is held to what matters for an
ablation's verdict: each run trains exactly what it trains alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from . import training

pytestmark = pytest.mark.slow


def _trees(tmp_path, where: str, data) -> list[dict]:
    trees = []
    for name, seed in (("a", 1), ("b", 2)):
        tree = training.small_pretrain(tmp_path / where, name, data=str(data), seed=seed, max_steps=8, eval_every=8,
                                       checkpoint_every=4, tensorboard=False)
        trees.append(training.load(training.write_config(tmp_path / f"{where}-{name}.yaml", tree)).model_dump(
            mode="json"))
    return trees


def test_runs_sharing_a_process_train_and_score_what_each_does_alone(demo_tokens64, tmp_path):
    from gristmill.trainer.ablate import train_and_evaluate_runs

    vocab = json.loads((demo_tokens64 / "manifest.json").read_text())["vocab_size"]
    heldout = {"h": np.random.default_rng(0).integers(0, vocab, 4 * 64 + 1).astype(np.int64)}
    together = train_and_evaluate_runs(_trees(tmp_path, "together", demo_tokens64), heldout, {}, 64, 1)
    alone = [train_and_evaluate_runs([t], heldout, {}, 64, 1)[0] for t in _trees(tmp_path, "alone", demo_tokens64)]
    assert [[r["step"] for r in rows] for rows in together] == [[4, 8], [4, 8]]
    def scores(runs: list[list[dict]]) -> list[list[dict]]:
        return [[{k: v for k, v in r.items() if k != "checkpoint"} for r in rows] for rows in runs]

    assert scores(together) == scores(alone)  # the same held-out losses, to the last bit
    for name in ("a", "b"):
        for step in (4, 8):
            same = training.max_abs_diff(training.final_weights(tmp_path / "together" / "runs" / name, step),
                                         training.final_weights(tmp_path / "alone" / "runs" / name, step))
            assert same == 0.0, (name, step)
        run = json.loads((tmp_path / "together" / "runs" / name / "run.json").read_text())
        assert run["status"] == "succeeded" and run["checkpoint"].endswith("checkpoint_00000008")
        assert training.logged_steps(tmp_path / "together" / "runs" / name) == list(range(1, 9))
    # the two runs are two models (their seeds differ), not one seen twice
    assert scores(together)[0] != scores(together)[1]
    # a finished run is not trained again (resubmitted: its rows from its checkpoints)
    assert train_and_evaluate_runs(_trees(tmp_path, "together", demo_tokens64), heldout, {}, 64, 1) == together
