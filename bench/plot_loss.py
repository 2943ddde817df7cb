"""metrics.jsonl of a pretraining run → a PNG of the training and validation loss.

    python bench/plot_loss.py runs/books/pretrain/small-8k --output bench/results/books_loss.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="STORAGE_PATH/NAME of a run (holds metrics.jsonl)")
    ap.add_argument("--output", required=True, help="PNG to write")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    recs = [json.loads(x) for x in (Path(a.run_dir) / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
        best = min(val, key=lambda v: v[1])
        ax.annotate(f"{best[1]:.3f}", best, textcoords="offset points", xytext=(0, 8), ha="center")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(a.title or Path(a.run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.output)
    print(f"wrote {a.output}: {len(train)} train points, {len(val)} validation points"
          + (f", last validation loss {val[-1][1]:.4f} at step {val[-1][0]}" if val else ""))


if __name__ == "__main__":
    main()
