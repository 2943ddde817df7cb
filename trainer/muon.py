"""Muon for the hidden matrices, AdamW for the rest: one ``torch.optim.Optimizer`` (``pretrain.optimizer: muon``).

Muon (Keller Jordan, 2024; the modded-nanogpt speedrun) takes SGD's Nesterov momentum of a weight matrix's
gradient and replaces it by the nearest semi-orthogonal matrix (U Vᵀ of its SVD), approximated by five
Newton–Schulz iterations. Its update is then scaled as Moonshot's "Muon is scalable for LLM training" (2025)
does, by 0.2 · √max(rows, cols), which gives it the root-mean-square of an AdamW update: the run's learning
rate, schedule and decoupled weight decay then apply to both kinds of parameters unchanged.

Which parameters are Muon's: the 2-D weights of the transformer blocks (attention and MLP projections).
Embeddings, the output head, norm gains and classification heads stay with AdamW (:func:`param_groups`).

One optimizer with two kinds of group (``group["muon"]``) rather than two optimizers, so that the loop's
learning-rate schedule, gradient clipping and checkpoints (torch.distributed.checkpoint's optimizer state,
keyed by parameter name) work as they do for AdamW.

Under FSDP2 a weight is a DTensor sharded by rows: Muon needs the whole matrix, so each rank gathers the
momentum of each matrix (``full_tensor``), orthogonalises it — every rank the same matrix, the same result —
and keeps its own rows of the update. That costs one all-gather per matrix per step and the Newton–Schulz
work on every rank; under DDP every rank holds every matrix and nothing is gathered.
"""

from __future__ import annotations

import math

import torch

#: the quintic's coefficients (Keller Jordan's: converge fast from singular values in (0, 1])
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """≈ U Vᵀ of ``g``'s SVD by Newton–Schulz (singular values pushed towards 1, to within ~±0.3: enough
    for an update direction). bf16 on CUDA (as the speedrun), fp32 elsewhere."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:  # X Xᵀ on the smaller side
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm ≤ Frobenius norm ≤ 1
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


def is_muon_param(name: str, p: torch.Tensor) -> bool:
    """A hidden matrix: a 2-D weight inside a transformer block (``layers.N.``; wrappers prefix the name)."""
    return p.dim() == 2 and (name.startswith("layers.") or ".layers." in name)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Muon's matrices; AdamW's other matrices (embeddings, head; decayed, nanoGPT's rule) and 1-D gains (not)."""
    muon, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (muon if is_muon_param(name, p) else decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": muon, "muon": True, "weight_decay": weight_decay},
              {"params": decay, "muon": False, "weight_decay": weight_decay},
              {"params": no_decay, "muon": False, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class MuonAdamW(torch.optim.Optimizer):
    """Muon on groups with ``muon: True``, AdamW (decoupled weight decay, bias-corrected moments) on the others."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5, weight_decay: float = 0.0):
        defaults = dict(lr=lr, betas=betas, eps=eps, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay, muon=False)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (self._muon if group["muon"] else self._adamw)(group)
        return loss

    def _muon(self, group: dict) -> None:
        lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - beta)
            g = p.grad.lerp(buf, beta) if group["nesterov"] else buf
            update = _orthogonalize_whole(g, group["ns_steps"])
            scale = 0.2 * math.sqrt(max(p.shape[-2], p.shape[-1]))  # AdamW's update RMS (Moonshot)
            p.mul_(1 - lr * wd)
            p.add_(update, alpha=-lr * scale)

    def _adamw(self, group: dict) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "step" not in state:
                # a tensor, as torch's AdamW keeps it: the same checkpoint layout
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"].item()
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v / (1 - beta2 ** t)).sqrt_().add_(eps)
            p.mul_(1 - lr * wd)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))


def _orthogonalize_whole(g: torch.Tensor, steps: int) -> torch.Tensor:
    """:func:`orthogonalize` of the whole matrix, also when ``g`` is an FSDP2 shard (DTensor): gathered, then
    this rank's rows of the result (every rank computes the same matrix)."""
    if not hasattr(g, "full_tensor"):
        return orthogonalize(g, steps)
    from torch.distributed.tensor import distribute_tensor

    full = orthogonalize(g.full_tensor(), steps)
    return distribute_tensor(full, g.device_mesh, g.placements, src_data_rank=None)
