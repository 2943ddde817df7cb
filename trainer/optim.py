"""The optimizer and the learning-rate schedule of a training run (trainer/loop.py), shared with the benchmarks."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gristmill.config import LoopConfig
from gristmill.trainer.data import DataError


def lr_at(step: int, p: LoopConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    span = max(1, p.max_steps - p.warmup_steps)
    progress = min(1.0, (step - p.warmup_steps) / span)
    return p.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (p.lr - p.min_lr)


def build_optimizer(model: torch.nn.Module, p: LoopConfig, device: torch.device) -> torch.optim.Optimizer:
    """The run's optimizer over ``model``'s parameters (wrapped or not): AdamW, or with ``optimizer: muon``
    Muon for the blocks' matrices and AdamW for the rest. Each group's ``lr_scale`` times :func:`lr_at` is its
    learning rate at a step (the loop sets it before every update)."""
    if getattr(p, "optimizer", "adamw") == "muon":
        from gristmill.trainer.muon import MuonAdamW, param_groups

        groups = param_groups(model, p.weight_decay)
        for g in groups:  # train_step sets each group's rate to the schedule's × lr_scale
            g["lr_scale"] = (p.muon_lr or p.lr) / p.lr if g["muon"] else 1.0
        return MuonAdamW(groups, lr=p.lr, betas=(p.beta1, p.beta2))
    # no weight decay on norms (1-d); embeddings and matrices decay (nanoGPT's rule)
    decay = [q for q in model.parameters() if q.requires_grad and q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.requires_grad and q.dim() < 2]
    groups = [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=p.lr, betas=(p.beta1, p.beta2), eps=1e-8, **extra)


def check_same_optimizer(state: dict, path: Path, p: LoopConfig) -> None:
    """A run resumes with the optimizer it started with: another one's state does not fit (checkpoints before
    ``pretrain.optimizer`` existed are AdamW's)."""
    was, now = state.get("optimizer", "adamw"), getattr(p, "optimizer", "adamw")
    if was != now:
        raise DataError(f"{path} was trained with optimizer {was} and the config says {now}: its optimizer state "
                        f"cannot continue under another optimizer. Set pretrain.optimizer: {was} to resume this run, "
                        "or start a new one (another pretrain.name, or init from it with a fine-tuning command)")
