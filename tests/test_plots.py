"""Training plots (trainer/plots.py, `gristmill plot`) and the TensorBoard tags of a run's metrics."""

from __future__ import annotations

import json

from gristmill.trainer.metrics import tensorboard_scalars
from gristmill.trainer.plots import read_metrics

from .conftest import run_cli


def _run(root, name: str, scale: float):
    d = root / name
    d.mkdir()
    recs = [{"step": 0, "event": "start", "peak_flops": 1e12, "time": 1.7e9}]
    for step in range(1, 21):
        recs.append({"step": step, "loss": scale * 6 / step ** 0.3, "lr": 1e-3, "tokens_per_s": 900.0,
                     "tokens_seen": step * 512, "time": 1.7e9 + step})
        if step % 10 == 0:
            recs.append({"step": step, "val_loss": scale * 6.2 / step ** 0.3, "val_ppl": 400.0, "val_tokens": 1024})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 21, "lo')
    return d


def test_metrics_are_read_against_tokens_seen(tmp_path):
    train, val = read_metrics(_run(tmp_path, "a", 1.0))
    assert len(train) == 20 and train[-1]["tokens"] == 20 * 512  # a line being written is skipped
    assert [(v["step"], v["tokens"]) for v in val] == [(10, 5120), (20, 10240)]  # at their step's tokens


def test_plot_overlays_runs_and_refuses_what_is_not_a_run(tmp_path):
    a, b = _run(tmp_path, "a", 1.0), _run(tmp_path, "b", 1.1)
    out = tmp_path / "compare.png"
    r = run_cli("plot", a, b, "--output", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {out}" in r.stdout
    bad = run_cli("plot", tmp_path / "missing")
    assert bad.returncode == 2 and "no metrics.jsonl in" in bad.stderr


def test_tensorboard_gets_curves_not_timestamps():
    assert tensorboard_scalars({"step": 5, "loss": 2.5, "lr": 1e-3, "time": 1.7e9, "tokens_seen": 640}) == {
        "train/loss": 2.5, "train/lr": 1e-3, "train/tokens_seen": 640.0}
    assert tensorboard_scalars({"step": 10, "val_loss": 3.0, "val_ppl": 20.1, "val_tokens": 1024}) == {
        "val/loss": 3.0, "val/ppl": 20.1, "val/tokens": 1024.0}
    assert tensorboard_scalars({"step": 1, "loss": float("nan"), "diverged": True}) == {}
