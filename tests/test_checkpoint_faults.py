"""Checkpoints that were damaged after they were written: a resumed run takes the newest one that verifies
(the SHA-256 of every file) and says which it passed over and why; a checkpoint a run diverges from right
after resuming is not "the last good one", and the next resubmission resumes from an older checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from gristmill.errors import ExitCode

from . import training
from .conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def copied_run(pretrained_run, demo_tokens64, tmp_path) -> tuple[Path, Path]:
    """A copy of the 40-step run with checkpoints at 20, 30 and 40, and a config that continues it to step 44."""
    run_dir = tmp_path / "runs" / "whole"
    shutil.copytree(pretrained_run, run_dir)
    tree = training.small_pretrain(tmp_path, "whole", data=str(demo_tokens64), max_steps=44, checkpoint_every=4)
    return run_dir, training.write_config(tmp_path / "more.yaml", tree)


def test_a_checkpoint_damaged_in_place_is_passed_over_with_the_reason(copied_run):
    run_dir, cfg = copied_run
    weights = run_dir / "checkpoint_00000040" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[9] ^= 0x20  # a byte of the safetensors JSON header: the same size, so the checkpoint still looks complete
    weights.write_bytes(bytes(data))
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("not resuming from checkpoint_00000040: model.safetensors differs from its recorded SHA-256 "
            "(damaged after it was written)") in r.stderr
    assert training.resumed_from(run_dir) == [30]
    assert training.checkpoint_complete(run_dir, 44)

    # submitted once more: it says the run is complete, with its final metrics, and trains nothing
    done = run_cli("pretrain", "--config", cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is already complete at step 44 (max_steps 44): nothing to train" in done.stderr
    assert '"step": 44' in done.stdout and '"loss"' in done.stdout and training.resumed_from(run_dir) == [30]


def test_a_run_that_diverges_right_after_resuming_does_not_bless_that_checkpoint(copied_run):
    run_dir, cfg = copied_run
    ckpt40 = run_dir / "checkpoint_00000040"
    # damage the checksums cannot see (it happened before they were taken): NaN in the optimizer's state,
    # which loads, and turns the weights into NaN at the first update
    osd = torch.load(ckpt40 / "optimizer.pt", weights_only=True)
    for entry in osd["state"].values():  # every moment of every parameter (Muon's momentum, AdamW's averages)
        for value in entry.values():
            if torch.is_tensor(value) and value.dim() > 0:
                value.fill_(float("nan"))
    torch.save(osd, ckpt40 / "optimizer.pt")
    state = json.loads((ckpt40 / "trainer_state.json").read_text())
    state["files"]["optimizer.pt"] = (ckpt40 / "optimizer.pt").stat().st_size
    state["sha256"]["optimizer.pt"] = hashlib.sha256((ckpt40 / "optimizer.pt").read_bytes()).hexdigest()
    (ckpt40 / "trainer_state.json").write_text(json.dumps(state))

    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == ExitCode.DIVERGED, r.stderr[-3000:]
    info = json.loads((run_dir / "DIVERGED.json").read_text())
    assert info["last_good_checkpoint"] == str(run_dir / "checkpoint_00000030")  # not the one it resumed from
    assert "checkpoint_00000040 is marked suspect" in r.stderr

    again = run_cli("pretrain", "--config", cfg)  # resubmitted: it does not fail the same way
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not resuming from checkpoint_00000040: the run diverged" in again.stderr
    assert training.resumed_from(run_dir)[-1] == 30 and training.checkpoint_complete(run_dir, 44)
