"""Training plots from a run's ``metrics.jsonl``: loss and validation loss, learning rate and throughput
against tokens seen — a PNG next to the metrics that every training run keeps current
(``training.png``), and ``gristmill plot RUN...`` overlaying several runs. Static files: no TensorBoard
server to start to see whether a run learns."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("gristmill.trainer")

#: the plot a run keeps next to its metrics.jsonl
PLOT_FILE = "training.png"
#: pyplot's state is global: runs that train in threads of one process (an ablation's) draw one at a time
_PYPLOT = threading.Lock()


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(training records with their loss, validation records) of a run, each with ``tokens`` (tokens seen at
    its step; a validation record takes the training record's of the same step)."""
    path = Path(run_dir) / "metrics.jsonl"
    train, val = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if "loss" in rec and "tokens_seen" in rec:
                train.append({**rec, "tokens": rec["tokens_seen"]})
            elif "val_loss" in rec:
                val.append(rec)
    tokens_at = {r["step"]: r["tokens"] for r in train}
    per_step = train[-1]["tokens"] / train[-1]["step"] if train and train[-1]["step"] else None
    for r in val:
        r["tokens"] = tokens_at.get(r["step"], r["step"] * per_step if per_step else r["step"])
    return train, val


def plot_runs(run_dirs: list[str | Path], output: str | Path, title: str | None = None) -> Path:
    """One figure of every run (a colour each): loss (thin) and validation loss (dots), learning rate and
    tokens per second, all against tokens seen. Written atomically (a reader never sees half a PNG)."""
    with _PYPLOT:
        return _draw(run_dirs, output, title)


def _draw(run_dirs: list[str | Path], output: str | Path, title: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr, ax_speed) = plt.subplots(1, 3, figsize=(14, 4))
    for k, run in enumerate(run_dirs):
        train, val = read_metrics(run)
        colour, name = f"C{k % 10}", Path(run).name
        if train:
            x = [r["tokens"] for r in train]
            ax_loss.plot(x, [r["loss"] for r in train], color=colour, lw=1, alpha=0.8, label=f"{name} train")
            ax_lr.plot(x, [r["lr"] for r in train], color=colour, lw=1.2, label=name)
            ax_speed.plot(x, [r.get("tokens_per_s", float("nan")) for r in train], color=colour, lw=1.2, label=name)
        if val:
            ax_loss.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", color=colour, ms=4,
                         lw=1.5, label=f"{name} validation")
    for ax, what in ((ax_loss, "loss (nats per token)"), (ax_lr, "learning rate"), (ax_speed, "tokens per second")):
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    fig.suptitle(title or ", ".join(Path(r).name for r in run_dirs))
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, output)
    finally:
        plt.close(fig)
        with contextlib.suppress(OSError):
            tmp.unlink()
    return output


#: training.png is redrawn at a checkpoint at most this often (and always at the last one)
PLOT_EVERY_S = 60.0


def refresh_plot(run_dir: Path, title: str, final: bool, last_at: float) -> float:
    """Redraw RUN_DIR/training.png from the metrics so far, at most every PLOT_EVERY_S seconds (``last_at``: the
    monotonic time of the last redraw) and always when ``final``; returns the time of this one. A plot that fails
    is a warning, never the run's end."""
    if not final and time.monotonic() - last_at < PLOT_EVERY_S:
        return last_at
    try:
        plot_runs([run_dir], run_dir / PLOT_FILE, title)
    except Exception as e:  # noqa: BLE001 - a plot is never worth a run
        log.warning("could not draw %s: %s: %s", run_dir / PLOT_FILE, type(e).__name__, e)
    return time.monotonic()
