"""The speedrun options in real training runs (issue 32): Muon with every model option on the demo tokens, exact resume
in this process and on two ranks under FSDP2 (torchrun; Ray Train's local mode)."""

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


def test_muon_with_every_option_learns_and_resumes_exactly_on_one_and_two_ranks(demo_tokens64, tmp_path):
    """Muon with every model option: a run in this process learns and, resumed from its step-4 checkpoint, ends
    with the uninterrupted run's weights; the same run on two ranks under FSDP2 (each matrix sharded by rows:
    Muon gathers it to orthogonalise) follows the one-process run (the same global batches; reductions in
    another order, so not bit for bit) and resumes exactly too."""
    cfg = training.load(training.write_config(tmp_path / "one.yaml", _tree(tmp_path, "one", demo_tokens64)))
    api.pretrain(cfg)
    one = tmp_path / "runs" / "one"
    losses = [m["loss"] for m in training.metrics(one) if "loss" in m]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < losses[0] - 0.2
    args = load_model_args(one / "checkpoint_00000008")
    assert args.qk_norm and args.mlp == "relu2" and args.document_mask and args.eos_id >= 0
    whole = _lose_the_last_checkpoint(one)
    api.pretrain(cfg)
    assert training.resumed_from(one) == [4]
    _assert_equal(training.final_weights(one, 8), whole)
    # resubmitted for more steps with another optimizer: refused, saying how to resume
    other = _tree(tmp_path, "one", demo_tokens64, max_steps=12)
    other["pretrain"]["optimizer"] = "adamw"
    with pytest.raises(Exception, match="trained with optimizer muon and the config says adamw"):
        api.pretrain(training.load(training.write_config(tmp_path / "other.yaml", other)))

    fsdp_cfg = training.write_config(tmp_path / "fsdp.yaml", _tree(tmp_path, "fsdp", demo_tokens64, parallel="fsdp"))
    r = training.torchrun("pretrain", fsdp_cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    fsdp = tmp_path / "runs" / "fsdp"
    assert len(list((fsdp / "workers").glob("rank*.json"))) == 2
    fsdp_losses = [m["loss"] for m in training.metrics(fsdp) if "loss" in m]
    assert max(abs(a - b) for a, b in zip(losses, fsdp_losses)) < 2e-3
    assert training.max_abs_diff(training.final_weights(fsdp, 8), whole) < 1e-3
    sharded_whole = _lose_the_last_checkpoint(fsdp)
    r = training.torchrun("pretrain", fsdp_cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert training.resumed_from(fsdp) == [4]
    _assert_equal(training.final_weights(fsdp, 8), sharded_whole)
