"""The speedrun's options (issue 32): QK-norm, relu² MLP, logit soft-cap, document-aware causal mask, and the Muon
optimizer; each against its definition, the CPU kernels against the plain ops, and export to transformers (Qwen3
for QK-norm, a refusal naming the option where transformers has no architecture)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gristmill.config import GristmillConfig
from gristmill.trainer import cpu_ops
from gristmill.trainer.model import GPT, ModelArgs, causal_document_mask, lm_loss, resolve_model_args
from gristmill.trainer.muon import MuonAdamW, orthogonalize, param_groups

from .test_mlm_unit import VOCAB, _save, _train_tokenizer

EOS = 2


def _args(**kw) -> ModelArgs:
    base = dict(vocab_size=VOCAB, padded_vocab_size=448, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                ffn_hidden=192, max_seq_len=64)
    return ModelArgs(**{**base, **kw})


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    m = GPT(_args(**kw))
    with torch.no_grad():  # gains away from 1, so that a wrong layout shows
        for p in m.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return m


def _ids(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (1, n), generator=g)  # no special ids


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return _train_tokenizer(tmp_path_factory.mktemp("tok") / "t")


def test_the_model_options_are_off_and_muon_is_on_by_default_and_defaults_stay_out_of_the_dump():
    cfg = GristmillConfig()
    args = resolve_model_args(cfg.model, vocab_size=VOCAB, seq_len=64)
    assert (args.qk_norm, args.mlp, args.logit_softcap, args.document_mask) == (False, "swiglu", 0.0, False)
    assert (cfg.pretrain.optimizer, cfg.pretrain.muon_lr) == ("muon", 0.02)  # what bench_speedrun.py measured
    dump = cfg.model_dump(mode="json")
    assert not {"qk_norm", "mlp", "logit_softcap", "document_mask"} & dump["model"].keys()
    assert not {"optimizer", "muon_lr"} & dump["pretrain"].keys()
    on = GristmillConfig.model_validate({"model": {"qk_norm": True, "mlp": "relu2", "logit_softcap": 15,
                                                   "document_mask": True}, "pretrain": {"optimizer": "adamw"}})
    assert on.model_dump(mode="json")["model"]["mlp"] == "relu2"
    assert on.model_dump(mode="json")["pretrain"]["optimizer"] == "adamw"
    # a dump reads back as the same config, the optimizer included
    assert GristmillConfig.model_validate(on.model_dump(mode="json")).pretrain.optimizer == "adamw"
    assert GristmillConfig.model_validate(dump).pretrain.optimizer == "muon"
    relu2 = resolve_model_args(on.model, vocab_size=VOCAB, seq_len=64)
    assert relu2.ffn_hidden == 4 * relu2.d_model and relu2.logit_softcap == 15.0


def test_qk_norm_normalises_each_heads_queries_and_keys_alike_on_the_cpu_kernels_and_the_plain_ops(monkeypatch):
    m = _model(qk_norm=True)
    attn = m.layers[0].attn
    assert attn.q_norm.weight.shape == (16,) and attn.k_norm.weight.shape == (16,)
    x = _ids(0, 40)
    fast = m(x)
    lm_loss(fast, x).backward()
    fast_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    monkeypatch.setattr(cpu_ops, "eager_cpu", lambda *a: False)
    slow = m(x)
    lm_loss(slow, x).backward()
    assert (fast - slow).abs().max().item() <= 1e-5
    for n, p in m.named_parameters():
        assert torch.allclose(fast_grads[n], p.grad, atol=1e-5, rtol=1e-4), n
    # the norm changes the model: without it the logits differ
    assert (GPT(_args()).eval()(x) - slow).abs().max().item() > 1e-3


def test_relu2_mlp_is_two_matrices_and_relu_squared():
    m = _model(mlp="relu2", ffn_hidden=256)
    mlp = m.layers[0].mlp
    assert not hasattr(mlp, "gate_proj") and mlp.up_proj.weight.shape == (256, 64)
    h = torch.randn(3, 5, 64)
    want = F.linear(torch.relu(F.linear(h, mlp.up_proj.weight)) ** 2, mlp.down_proj.weight)
    assert torch.allclose(mlp(h), want, atol=1e-6)
    with pytest.raises(ValueError, match="relu2"):
        GPT(_args(mlp="gelu"))


def test_logit_softcap_bounds_the_logits_by_tanh():
    capped, plain = _model(logit_softcap=2.0), _model()
    plain.load_state_dict(capped.state_dict())
    with torch.no_grad():  # large logits, so that the cap bites
        capped.lm_head.weight.mul_(50)
        plain.lm_head.weight.mul_(50)
    x = _ids(1, 20)
    raw, out = plain(x), capped(x)
    assert raw.abs().max() > 10.0 and out.abs().max() <= 2.0
    assert torch.allclose(out, 2.0 * torch.tanh(raw / 2.0), atol=1e-5)


def test_document_mask_keeps_attention_within_each_document():
    """A packed row [doc A, eos, doc B]: with the mask, B's logits are those of B alone (RoPE sees only relative
    positions), and A's are A's alone; without it, B sees A."""
    a, b = _ids(2, 20), _ids(3, 15)
    row = torch.cat([a, torch.tensor([[EOS]]), b], dim=1)
    masked = _model(document_mask=True, eos_id=EOS).eval()
    plain = _model().eval()
    with torch.no_grad():
        packed, alone_b, alone_a = masked(row), masked(b), masked(torch.cat([a, torch.tensor([[EOS]])], 1))
        unmasked = plain(row)
    assert (packed[:, 21:] - alone_b).abs().max().item() <= 1e-4
    assert (packed[:, :21] - alone_a).abs().max().item() <= 1e-4
    assert (unmasked[:, 21:] - alone_b).abs().max().item() > 1e-3
    mask = causal_document_mask(row, EOS)[0, 0]
    assert mask[25, 21] and not mask[25, 5] and not mask[5, 6] and mask[20, 0]  # the eos closes doc A
    with pytest.raises(ValueError, match="eos"):
        causal_document_mask(row, -1)


def test_qk_norm_exports_as_qwen3_with_equal_logits(tok, tmp_path):
    import transformers

    from gristmill.trainer.export import export_hf

    native = _model(qk_norm=True, tie_embeddings=False, document_mask=True, eos_id=EOS).eval()
    out = export_hf(_save(tmp_path / "checkpoint_00000001", native, tok), tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    for seed in range(3):
        x = _ids(seed, 48)  # one document: the document mask is the causal mask
        with torch.no_grad():
            assert (native(x) - hf(x).logits).abs().max().item() <= 1e-4
    assert "one document" in (out / "README.md").read_text()


@pytest.mark.parametrize("option, value, named", [("mlp", "relu2", "model.mlp: relu2"),
                                                  ("logit_softcap", 15.0, "model.logit_softcap: 15.0")])
def test_options_without_an_hf_architecture_refuse_export_naming_the_option(tok, tmp_path, option, value, named):
    from gristmill.trainer.export import ExportError, export_hf

    native = _model(**{option: value})
    path = _save(tmp_path / "checkpoint_00000001", native, tok)
    with pytest.raises(ExportError, match=named):
        export_hf(path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # nothing half-written


def test_newton_schulz_gives_singular_values_near_one():
    g = torch.randn(48, 96) @ torch.diag(torch.logspace(-2, 1, 96))  # badly conditioned
    for m in (g, g.T):
        s = torch.linalg.svdvals(orthogonalize(m))
        assert s.min() > 0.5 and s.max() < 1.3, s
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 100


def test_muon_updates_block_matrices_at_adamws_rms_and_leaves_the_rest_to_adamw():
    torch.manual_seed(0)
    m = GPT(_args(tie_embeddings=False))
    groups = param_groups(m, weight_decay=0.0)
    muon = {id(p) for g in groups if g["muon"] for p in g["params"]}
    names = {n for n, p in m.named_parameters() if id(p) in muon}
    assert names == {n for n, p in m.named_parameters() if n.startswith("layers.") and p.dim() == 2}
    assert "embed.weight" not in names and "lm_head.weight" not in names
    opt = MuonAdamW(groups, lr=0.01)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = _ids(4, 40)
    lm_loss(m(x), x).backward()
    opt.step()
    for n, p in m.named_parameters():
        if n in names:  # an orthogonalised update scaled to RMS 0.2 · lr
            rms = (p.detach() - before[n]).pow(2).mean().sqrt().item()
            assert 0.1 * 0.01 < rms < 0.3 * 0.01, (n, rms)


def test_without_muon_groups_it_is_torchs_adamw():
    torch.manual_seed(0)
    a, b = GPT(_args()), GPT(_args())
    b.load_state_dict(a.state_dict())
    groups = [{"params": [p for p in a.parameters() if p.dim() >= 2], "muon": False, "weight_decay": 0.1},
              {"params": [p for p in a.parameters() if p.dim() < 2], "muon": False, "weight_decay": 0.0}]
    mine = MuonAdamW(groups, lr=3e-3, betas=(0.9, 0.95))
    ref = torch.optim.AdamW([{"params": [p for p in b.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in b.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    for step in range(4):
        x = _ids(10 + step, 32)
        for model, opt in ((a, mine), (b, ref)):
            opt.zero_grad()
            lm_loss(model(x), x).backward()
            opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_generation_with_every_option_gives_the_full_forwards_logits():
    """The KV-cache path (generate) runs the plain ops: with QK-norm, relu², the soft-cap and the document mask
    (a prompt is one document) its logits are the full forward's, which ran the CPU kernels."""
    from gristmill.trainer.model import KVCache

    m = _model(qk_norm=True, mlp="relu2", ffn_hidden=256, logit_softcap=15.0, document_mask=True, eos_id=EOS).eval()
    x = torch.cat([_ids(5, 24), _ids(6, 24)])
    with torch.no_grad():
        full = m(x)
        cache = KVCache(m.args, 2, 64, "cpu", torch.float32)
        steps = [m(x[:, :10], cache=cache)] + [m(x[:, t:t + 1], cache=cache) for t in range(10, 24)]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-4
