"""Hand-written CPU kernels for eager fp32 training: the same values as the plain PyTorch ops of
trainer/model.py up to rounding, with fewer passes over the activations and fewer temporaries (on a
CPU every fresh activation-sized tensor is paid in page faults).

The model calls them only where :func:`eager_cpu` says they serve (eager, CPU, fp32/fp64, no
autocast); CUDA, torch.compile and bf16 run the plain ops, whose fusion is better there. They live
apart from the model so that the model reads in one sitting; tests/test_model_fast_ops.py holds each
to its plain counterpart (gradcheck and equality).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eager_cpu(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the hand-written CPU kernels below serve ``x``: eager (not traced by torch.compile, whose
    fusion of the plain ops is better), on the CPU, outside autocast, in fp32 or fp64 (gradcheck) with
    ``others`` of the same dtype. Elsewhere (CUDA, compiled, autocast, bf16) the plain PyTorch ops run."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and all(o.dtype == x.dtype for o in others)
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu"))


class RMSNormCPU(torch.autograd.Function):
    """RMSNorm with a hand-written backward: fewer passes over the activations and fewer temporaries
    than autograd through pow/mean/rsqrt/mul (on CPU, ~2× faster forward + backward).

    y = x̂ · w with x̂ = x · r, r = 1/√(mean(x²) + eps) per row. Saves x̂ and r; the backward is
    dw = Σ_rows g · x̂ and dx = r · (g · w − x̂ · mean(g · w · x̂))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # the plain path's operations in its order (the same values), x²'s memory reused for x̂
        sq = x.square()
        r = sq.mean(-1, keepdim=True).add_(eps).rsqrt_()
        xhat = torch.mul(x, r, out=sq)
        ctx.save_for_backward(xhat, r, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        xhat, r, weight = ctx.saved_tensors
        d = xhat.shape[-1]
        gx = g * xhat
        dw = gx.reshape(-1, d).sum(0) if ctx.needs_input_grad[1] else None
        dx = None
        if ctx.needs_input_grad[0]:
            c = torch.mv(gx.reshape(-1, d), weight).view(r.shape).mul_(-1.0 / d)  # −mean(g · w · x̂)
            dx = torch.mul(g, weight, out=gx)  # gx is spent: reuse its memory
            dx.addcmul_(xhat, c).mul_(r)
        return dx, dw, None


def interleave_pairs(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q or k projection (n_head · D, d_model) reordered in each head from rotate-half order
    (0 … D/2 − 1, D/2 … D − 1) to pairs side by side (0, D/2, 1, D/2 + 1, …)."""
    hd = w.shape[0] // n_head
    return w.view(n_head, 2, hd // 2, -1).transpose(1, 2).reshape(w.shape)


def rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x (B, T, H, D) whose last dimension holds the rotate-half pairs (j, j + D/2) side by side
    (:func:`interleave_pairs`): one complex multiplication rotates each pair. cos/sin: (T, D), rotate-half
    layout. The result, in the same pair order, is :func:`apply_rope`'s with its dimensions reordered."""
    B, T, H, D = x.shape
    rot = torch.complex(cos[:, : D // 2], sin[:, : D // 2]).unsqueeze(1)  # (T, 1, D/2)
    z = torch.view_as_complex(x.unflatten(-1, (D // 2, 2))) * rot
    return torch.view_as_real(z).flatten(-2)


class SwiGLUCPU(torch.autograd.Function):
    """silu(a) · b saving only a and b (autograd also keeps silu(a), a third (B, T, ffn) tensor per layer,
    recomputed here in the backward) and with fewer temporaries: less memory to fault in on CPU."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return F.silu(a).mul_(b)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, b = ctx.saved_tensors
        db = F.silu(a).mul_(g)
        gb = g * b
        da = torch.ops.aten.silu_backward.grad_input(gb, a, grad_input=gb)  # in place over g · b
        return da, db


class CrossEntropyCPU(torch.autograd.Function):
    """``F.cross_entropy`` (mean over the targets that are not ignored) with the same forward, whose
    backward makes the gradient softmax · w − w · onehot (w = g / n on counted rows, 0 on ignored ones)
    directly, without autograd's zero-filled logits-sized tensor. With ``inplace`` it writes the gradient
    over the saved log-probabilities: no logits-sized tensor at all, where on CPU each fresh one is paid in
    page faults (~80 ms at 4096 × 8000 in fp32); the graph can then be backpropagated once, as training
    does (retain_graph=True fails with an error)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, inplace: bool) -> torch.Tensor:
        logp = torch.log_softmax(logits, -1)
        ctx.save_for_backward(logp, targets)
        ctx.ignore_index, ctx.inplace, ctx.spent = ignore_index, inplace, False
        return F.nll_loss(logp, targets, ignore_index=ignore_index)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        if ctx.spent:
            raise RuntimeError("lm_loss on CPU overwrote its saved log-probabilities with the gradient: its graph "
                               "can be backpropagated only once (retain_graph=True is not supported)")
        logp, targets = ctx.saved_tensors
        ctx.spent = ctx.inplace
        valid = targets != ctx.ignore_index
        w = (valid.to(logp.dtype) * (g / valid.sum())).unsqueeze(1)  # (N, 1)
        grad = (logp.exp_() if ctx.inplace else logp.exp()).mul_(w)
        grad.scatter_add_(1, targets.where(valid, 0).unsqueeze(1), -w)
        return grad, None, None, None


class SoftcapCPU(torch.autograd.Function):
    """``cap · tanh(logits / cap)`` over the logits in place (the output projection's backward does not need its
    output): no new logits-sized tensor forward, one backward, where autograd through div, tanh and mul makes three
    each way (the soft-cap then cost a third of a small model's CPU step). Saves the capped logits y; the
    backward is g · (1 − (y / cap)²)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, cap: float) -> torch.Tensor:
        ctx.mark_dirty(logits)
        y = logits.div_(cap).tanh_().mul_(cap)
        ctx.save_for_backward(y)
        ctx.cap = cap
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (y,) = ctx.saved_tensors
        return y.square().mul_(-1.0 / (ctx.cap * ctx.cap)).add_(1.0).mul_(g), None
