"""Where a run's numbers go: metrics.jsonl and TensorBoard (rank 0), and the progress bar."""

from __future__ import annotations

import json
from pathlib import Path


def tensorboard_scalars(rec: dict) -> dict[str, float]:
    """A metrics record as TensorBoard tags: ``train/loss``, ``val/loss``, ``val/ppl`` ...; not the wall-clock
    time (a Unix timestamp as float32 is no curve) nor the step (TensorBoard's own axis)."""
    out = {}
    for k, v in rec.items():
        if k in ("step", "time") or not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            continue
        out[f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}"] = float(v)
    return out


class MetricsLog:
    """Rank 0's sinks: the log, metrics.jsonl and TensorBoard (both under the run directory)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        # a resumed run drops what the interrupted attempt logged after its checkpoint: the file reads as one run
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("step", 0) <= resume_step:
                    kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None and "event" not in rec:  # start/resume events: one point each, not a curve
            for tag, v in tensorboard_scalars(rec).items():
                self.tb.add_scalar(tag, v, rec["step"])
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def progress_bar(enabled: bool, local_mode: bool, total: int, initial: int):
    if not enabled:
        return None
    if local_mode:
        from tqdm import tqdm
    else:
        from ray.experimental.tqdm_ray import tqdm  # rendered by the driver
    return tqdm(total=total, initial=initial, desc="pretrain", unit="step")
