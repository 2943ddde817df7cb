"""The speedrun options in real training runs (issue 32): Muon with every model option on the demo tokens, exact resume
in this process and on two ranks under DDP and FSDP2 (torchrun; Ray Train's local mode)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gristmill import api
from gristmill.trainer.checkpoint import load_model_args

from . import training

pytestmark = pytest.mark.slow

SPEEDRUN_MODEL = {"preset": "tiny", "qk_norm": True, "mlp": "relu2", "logit_softcap": 15.0, "document_mask": True}


def _tree(tmp_path: Path, name: str, data: Path, **pretrain) -> dict:
    return {"model": SPEEDRUN_MODEL, "pretrain": {
        "data": str(data), "optimizer": "muon", "muon_lr": 0.03, "storage_path": str(tmp_path / "runs"), "name": name,
        "num_workers": 0, "batch_size": 16, "micro_batch_size": 8, "max_steps": 8, "warmup_steps": 2,
        "log_every": 1, "eval_every": 8, "eval_batches": 2, "checkpoint_every": 4, "tensorboard": False, **pretrain}}


def _lose_the_last_checkpoint(run: Path) -> dict:
    """The final weights, then the final checkpoint deleted: a run that was killed after its step-4 checkpoint."""
    whole = training.final_weights(run, 8)
    shutil.rmtree(run / "checkpoint_00000008")
    return whole


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_muon_with_every_option_learns_and_resumes_exactly_in_one_process(demo_tokens64, tmp_path):
    cfg = training.load(training.write_config(tmp_path / "m.yaml", _tree(tmp_path, "muon", demo_tokens64,
                                                                          max_steps=8)))
    api.pretrain(cfg)
    run = tmp_path / "runs" / "muon"
    losses = [m["loss"] for m in training.metrics(run) if "loss" in m]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < losses[0] - 0.2
    args = load_model_args(run / "checkpoint_00000008")
    assert args.qk_norm and args.mlp == "relu2" and args.document_mask and args.eos_id >= 0
    whole = _lose_the_last_checkpoint(run)
    api.pretrain(cfg)
    assert training.resumed_from(run) == [4]
    _assert_equal(training.final_weights(run, 8), whole)


def test_muon_resumes_exactly_on_two_ranks_under_ddp_and_fsdp(demo_tokens64, tmp_path):
    """FSDP2 shards each matrix by rows: Muon gathers it to orthogonalise; DDP holds it whole. The two follow each
    other (reductions in another order: not bit for bit), and an FSDP run resumed from its step-4 checkpoint ends
    with the uninterrupted run's weights."""
    runs = {}
    for parallel in ("ddp", "fsdp"):
        cfg = training.write_config(tmp_path / f"{parallel}.yaml",
                                    _tree(tmp_path, parallel, demo_tokens64, parallel=parallel))
        r = training.torchrun("pretrain", cfg)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        runs[parallel] = tmp_path / "runs" / parallel
    losses = {k: [m["loss"] for m in training.metrics(v) if "loss" in m] for k, v in runs.items()}
    assert len(losses["ddp"]) == len(losses["fsdp"]) == 8
    assert max(abs(a - b) for a, b in zip(losses["ddp"], losses["fsdp"])) < 2e-3
    ddp, fsdp = training.final_weights(runs["ddp"], 8), training.final_weights(runs["fsdp"], 8)
    assert training.max_abs_diff(ddp, fsdp) < 1e-3
    whole = _lose_the_last_checkpoint(runs["fsdp"])
    r = training.torchrun("pretrain", tmp_path / "fsdp.yaml")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert training.resumed_from(runs["fsdp"]) == [4]
    _assert_equal(training.final_weights(runs["fsdp"], 8), whole)
