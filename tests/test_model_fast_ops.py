"""The model's hand-written CPU paths (trainer/model.py, issue 13): RMSNorm, RoPE on interleaved pairs with
the q/k/v projections as one matmul, SwiGLU and the cross-entropy. Each gives the plain PyTorch
formulation's values (the one CUDA, torch.compile and autocast run), its gradients pass gradcheck in
float64, and the whole model's logits and gradients match the plain path's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gristmill.trainer import cpu_ops as C
from gristmill.trainer.model import GPT, KVCache, ModelArgs, RMSNorm, apply_rope, lm_loss, rope_tables


def _args(**kw) -> ModelArgs:
    base = dict(vocab_size=300, padded_vocab_size=320, n_layer=2, n_head=4, n_kv_head=2, d_model=64, ffn_hidden=192,
                max_seq_len=64)
    return ModelArgs(**{**base, **kw})


def _rms_reference(x, w, eps):  # the formula as the plain path writes it
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def test_rmsnorm_gives_the_reference_values_and_gradients():
    torch.manual_seed(0)
    norm = RMSNorm(384, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(384))
    x = torch.randn(4, 64, 384, requires_grad=True)
    y, ref = norm(x), _rms_reference(x, norm.weight, 1e-5)
    assert y.grad_fn.name() == "RMSNormCPUBackward"
    assert (y - ref).abs().max().item() <= 1e-6 * ref.abs().max().item()  # measured: equal
    g = torch.randn_like(y)
    got, want = torch.autograd.grad(y, (x, norm.weight), g), torch.autograd.grad(ref, (x, norm.weight), g)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()


def test_fast_ops_pass_gradcheck_in_float64():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: C.RMSNormCPU.apply(x, w, 1e-5), (x, w))
    assert torch.autograd.gradcheck(lambda x: C.RMSNormCPU.apply(x, w.detach(), 1e-5), (x,))
    a, b = (torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(C.SwiGLUCPU.apply, (a, b))
    logits = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 2, -100, 10, 0, 3])
    assert torch.autograd.gradcheck(lambda z: C.CrossEntropyCPU.apply(z, targets, -100, False), (logits,))
    cos, sin = (t.double() for t in rope_tables(8, 5, 10_000.0))
    q = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: C.rope_pairs(q, cos, sin), (q,))


def test_rope_on_interleaved_pairs_is_rotate_half_reordered_and_keeps_q_dot_k():
    torch.manual_seed(0)
    B, T, H, D = 2, 48, 3, 16
    cos, sin = rope_tables(D, T, 10_000.0)
    q, k = torch.randn(B, T, H, D) * 3, torch.randn(B, T, H, D) * 3
    perm = torch.arange(D).view(2, D // 2).t().reshape(-1)  # (0, D/2, 1, D/2 + 1, …)
    want_q = apply_rope(q.transpose(1, 2), cos, sin).transpose(1, 2)
    got_q = C.rope_pairs(q[..., perm], cos, sin)
    assert (got_q - want_q[..., perm]).abs().max().item() <= 1e-6 * want_q.abs().max().item()
    want_k = apply_rope(k.transpose(1, 2), cos, sin).transpose(1, 2)
    got_k = C.rope_pairs(k[..., perm], cos, sin)
    scores = torch.einsum("bthd,bshd->bhts", got_q, got_k)
    assert torch.allclose(scores, torch.einsum("bthd,bshd->bhts", want_q, want_k), rtol=1e-5, atol=1e-4)
    w = torch.randn(H * D, 32)  # the weight rows reordered give the reordered projection
    x = torch.randn(5, 32)
    assert torch.equal(F.linear(x, C.interleave_pairs(w, H)), F.linear(x, w).view(5, H, D)[..., perm].view(5, -1))


def test_swiglu_equals_silu_times_up_projection():
    torch.manual_seed(0)
    a, b = (torch.randn(4, 32, 96, requires_grad=True) for _ in range(2))
    y, ref = C.SwiGLUCPU.apply(a, b), F.silu(a) * b
    assert torch.equal(y, ref)
    g = torch.randn_like(y)
    for u, v in zip(torch.autograd.grad(y, (a, b), g), torch.autograd.grad(ref, (a, b), g), strict=True):
        assert torch.allclose(u, v, rtol=0, atol=1e-6)


def test_lm_loss_equals_cross_entropy_and_is_backpropagated_once():
    torch.manual_seed(0)
    logits = torch.randn(2, 64, 320, requires_grad=True)
    targets = torch.randint(0, 300, (2, 64))
    targets[0, :10] = -100
    loss = lm_loss(logits, targets)
    ref = F.cross_entropy(logits.view(-1, 320), targets.view(-1), ignore_index=-100)
    assert loss.grad_fn.name() == "CrossEntropyCPUBackward" and torch.equal(loss, ref)
    (got,), (want,) = torch.autograd.grad(loss, logits, retain_graph=True), torch.autograd.grad(ref, logits)
    assert torch.allclose(got, want, rtol=0, atol=1e-8)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()
    logits_before = logits.detach().clone()
    lm_loss(logits, targets).backward()  # never writes over the caller's logits
    assert torch.equal(logits.detach(), logits_before)


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_the_fast_model_gives_the_plain_models_logits_and_gradients(monkeypatch, n_kv_head):
    torch.manual_seed(0)
    model = GPT(_args(n_kv_head=n_kv_head))
    x = torch.randint(0, 300, (3, 48))
    fast = model(x)
    lm_loss(fast, x).backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    monkeypatch.setattr(C, "eager_cpu", lambda *a: False)
    slow = model(x)
    lm_loss(slow, x).backward()
    assert (fast - slow).abs().max().item() <= 1e-5
    for n, p in model.named_parameters():
        assert torch.allclose(fast_grads[n], p.grad, rtol=1e-4, atol=1e-6), n
    # the state dict is the plain model's: checkpoints and the HF export see the same tensors
    assert list(model.state_dict()) == list(GPT(_args(n_kv_head=n_kv_head)).state_dict())


def test_generation_with_a_cache_matches_the_full_fast_forward():
    torch.manual_seed(0)
    model = GPT(_args()).eval()
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model.args, 2, 20, x.device, torch.float32)
        parts = torch.cat([model(x[:, :12], cache), model(x[:, 12:16], cache), model(x[:, 16:], cache)], dim=1)
    assert (full - parts).abs().max().item() <= 1e-5


def test_compile_and_autocast_take_the_plain_ops():
    torch.manual_seed(0)
    model = GPT(_args())
    x = torch.randint(0, 300, (2, 16))
    nodes = []

    def backend(gm, inputs):
        nodes.extend(str(n.target) for n in gm.graph.nodes)
        return gm.forward

    compiled = torch.compile(lambda x: lm_loss(model(x), x), fullgraph=True, backend=backend)
    loss = compiled(x)
    assert nodes and not any("autograd_function" in n for n in nodes)
    assert torch.allclose(loss, lm_loss(model(x), x), rtol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.randn(2, 16, 64)
        y = model.layers[0].attn_norm(h)
        assert y.grad_fn is None or "RMSNormCPU" not in y.grad_fn.name()
        assert torch.equal(y, _rms_reference(h, model.layers[0].attn_norm.weight, model.args.norm_eps))
        logits = model(x)
        assert logits.dtype == torch.bfloat16 and lm_loss(logits, x).grad_fn.name() != "CrossEntropyCPUBackward"


def test_softcap_in_place_gives_the_plain_values_and_gradients():
    torch.manual_seed(0)
    z = (torch.randn(6, 50, dtype=torch.float64) * 40).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: C.SoftcapCPU.apply(t * 1.0, 15.0), (z,))  # t * 1: not a leaf
    y = C.SoftcapCPU.apply(z * 1.0, 15.0)
    assert torch.allclose(y, 15.0 * torch.tanh(z / 15.0)) and y.abs().max() < 15.0
