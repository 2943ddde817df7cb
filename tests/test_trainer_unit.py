"""Fast tests of the trainer's logic: model, data order, schedule, checkpoints (no Ray)."""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch

from gristmill.config import ModelConfig, PretrainConfig, load_config
from gristmill.tokenizer.tokens import TokenDataError, TokenSplit
from gristmill.trainer import checkpoint as ckpt
from gristmill.trainer.data import BatchPlan, DataError, SampleStream, micro_batch_start, val_indices
from gristmill.trainer.mfu import mfu, peak_flops
from gristmill.trainer.model import GPT, KVCache, ModelArgs, flops_per_token, lm_loss, resolve_model_args
from gristmill.trainer.optim import lr_at


def _args(**kw) -> ModelArgs:
    base = dict(vocab_size=300, padded_vocab_size=320, n_layer=2, n_head=4, n_kv_head=2, d_model=64, ffn_hidden=192,
                max_seq_len=64)
    return ModelArgs(**{**base, **kw})


def test_presets_resolve_and_vocab_is_padded_to_64():
    a = resolve_model_args(ModelConfig(preset="124M"), vocab_size=32_003, seq_len=1024)
    assert (a.n_layer, a.n_head, a.d_model, a.max_seq_len) == (12, 12, 768, 1024)
    assert a.padded_vocab_size == 32_064 and a.padded_vocab_size % 64 == 0
    assert a.ffn_hidden == 2048  # 8/3 · 768 rounded up to 64
    m = resolve_model_args(ModelConfig(preset="350M", n_kv_head=4), vocab_size=32_000, seq_len=1024)
    assert (m.n_layer, m.d_model, m.n_kv_head) == (24, 1024, 4)
    with pytest.raises(ValueError, match="not a multiple of n_head"):
        resolve_model_args(ModelConfig(preset=None, n_layer=2, n_head=3, d_model=64), 100)
    with pytest.raises(ValueError, match="shorter than"):
        resolve_model_args(ModelConfig(preset="tiny", max_seq_len=128), 100, seq_len=256)


def test_gpt2_small_shape_has_the_expected_parameter_count():
    a = resolve_model_args(ModelConfig(preset="124M"), vocab_size=50_257, seq_len=1024)
    with torch.device("meta"):
        model = GPT(a)
    # tied embeddings: 50,304 × 768 once; 12 layers of 4·768² attention + 3·768·2048 SwiGLU + 2 norms; final norm
    per_layer = 4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768
    assert model.num_params() == 50_304 * 768 + 12 * per_layer + 768
    # FLOPs per token: 6 × matmul parameters (layers + output projection) + attention 12·L·d·T
    expected = 6 * (12 * (4 * 768 * 768 + 3 * 768 * 2048) + 768 * 50_304) + 12 * 12 * 768 * 1024
    assert flops_per_token(a, 1024) == expected


def test_tied_embeddings_share_one_tensor_and_untied_do_not():
    tied = GPT(_args())
    assert tied.lm_head.weight.data_ptr() == tied.embed.weight.data_ptr()
    untied = GPT(_args(tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.embed.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == 320 * 64


def test_forward_is_causal():
    torch.manual_seed(0)
    model = GPT(_args()).eval()
    x = torch.randint(0, 300, (1, 20))
    y = x.clone()
    y[0, 15:] = torch.randint(0, 300, (5,))
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[0, :15], b[0, :15])
    assert not torch.allclose(a[0, 15:], b[0, 15:])


def test_kv_cache_gives_the_same_logits_as_a_full_forward():
    torch.manual_seed(0)
    model = GPT(_args()).eval()
    x = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model.args, 2, 64, "cpu", torch.float32)
        first = model(x[:, :10], cache=cache)  # a prompt, then one token at a time
        steps = [model(x[:, t:t + 1], cache=cache) for t in range(10, 24)]
    got = torch.cat([first, *steps], dim=1)
    assert torch.allclose(got, full, atol=1e-5)
    assert cache.length == 24


def test_loss_is_mean_cross_entropy_and_ignores_minus_100():
    torch.manual_seed(0)
    model = GPT(_args()).eval()
    x = torch.randint(0, 300, (2, 8))
    t = x.roll(-1, 1)
    with torch.no_grad():
        logits = model(x)
        loss = lm_loss(logits, t)
        t2 = t.clone()
        t2[:, :4] = -100
        loss2 = lm_loss(logits, t2)
    ref = torch.nn.functional.cross_entropy(logits.view(-1, 320), t.view(-1))
    assert torch.allclose(loss, ref)
    second_half = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 320), t[:, 4:].reshape(-1))
    assert torch.allclose(loss2, second_half)
    assert abs(float(loss) - math.log(320)) < 0.5  # a fresh model is close to uniform


# --- data order -------------------------------------------------------------------------------------


def test_sample_stream_is_a_permutation_per_epoch_and_deterministic():
    s = SampleStream(10, seed=3)
    first = s.indices(0, 10)
    assert sorted(first) == list(range(10))
    second = s.indices(10, 10)
    assert sorted(second) == list(range(10)) and not np.array_equal(first, second)
    assert np.array_equal(SampleStream(10, seed=3).indices(5, 12), np.concatenate([first[5:], second[:7]]))
    assert not np.array_equal(SampleStream(10, seed=4).indices(0, 10), first)


def test_every_sample_is_read_once_whatever_the_worker_count():
    """Steps × micro-steps × ranks cover the sample stream exactly once, in the same global batches."""
    for world, micro in ((1, 8), (2, 4), (4, 2), (8, 1)):
        plan = BatchPlan(batch_size=16, micro_batch_size=micro, world_size=world)
        plan.check()
        seen = []
        for step in range(5):
            batch = []
            for m in range(plan.grad_accum):
                for r in range(world):
                    start = micro_batch_start(step, m, r, plan)
                    batch.extend(range(start, start + micro))
            assert sorted(batch) == list(range(step * 16, (step + 1) * 16))
            seen.extend(batch)
        assert sorted(seen) == list(range(80))


def test_resume_position_continues_the_same_stream():
    plan = BatchPlan(8, 4, 2)
    stream = SampleStream(37, seed=0)
    whole = [stream.indices(micro_batch_start(s, m, r, plan), 4) for s in range(10) for m in range(1) for r in range(2)]
    resumed_stream = SampleStream(37, seed=0)  # a new process: nothing carried over but the step
    tail = [resumed_stream.indices(micro_batch_start(s, m, r, plan), 4)
            for s in range(6, 10) for m in range(1) for r in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(whole[12:], tail))


def test_batch_plan_errors_say_what_to_change():
    with pytest.raises(DataError, match="not a multiple of micro_batch_size × workers"):
        BatchPlan(10, 4, 2).check()


def test_val_indices_do_not_depend_on_worker_count():
    for world in (1, 2, 3):
        batches = [val_indices(50, r, world, 4, 5) for r in range(world)]
        assert len({len(b) for b in batches}) == 1  # same number of batches on every rank
        assert sorted(int(i) for b in batches for chunk in b for i in chunk) == list(range(20))
    assert sum(len(c) for c in val_indices(7, 0, 1, 4, 0)) == 7


def _write_token_dir(path, n_train=5, n_val=2, seq_len=8):
    path.mkdir()
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        (path / split).mkdir()
        arr = (np.arange(n * (seq_len + 1)) % 50).astype(np.uint16)
        table = pa.table({"tokens": pa.FixedSizeListArray.from_arrays(pa.array(arr), seq_len + 1)})
        with pa.ipc.new_file(str(path / split / "part-00000.arrow"), table.schema) as w:
            w.write_table(table)
        splits[split] = {"sequences": n, "shards": [{"path": f"{split}/part-00000.arrow", "sequences": n}]}
    manifest = {"kind": "tokens", "seq_len": seq_len, "vocab_size": 50, "splits": splits}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_token_split_reads_rows_across_shards(tmp_path):
    d = _write_token_dir(tmp_path / "t")
    train = TokenSplit(d, "train")
    assert len(train) == 5 and train.rows(np.array([4, 0])).shape == (2, 9)
    assert train.rows(np.array([1]))[0, 0] == 9
    with pytest.raises(TokenDataError, match="gristmill tokenize"):
        TokenSplit(tmp_path, "train")


# --- schedule, checkpoints ----------------------------------------------------------------------------


def test_lr_warms_up_then_decays_to_min_lr():
    p = PretrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, p) == pytest.approx(0.1) and lr_at(9, p) == pytest.approx(1.0)
    assert lr_at(10, p) == pytest.approx(1.0) and lr_at(60, p) == pytest.approx(0.55)
    assert lr_at(110, p) == pytest.approx(0.1)
    with pytest.raises(Exception, match="min_lr"):
        load_config(None, ["pretrain.lr=0.001", "pretrain.min_lr=0.01"])


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = GPT(_args())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 300, (2, 16))
    lm_loss(model(x), x).backward()
    opt.step()
    msd, osd = ckpt.full_state(model, opt)
    rng = ckpt.gather_rng()
    state = {"step": 1, "samples": 2, "tokens_seen": 32}
    path = ckpt.save_checkpoint(tmp_path / "checkpoint_00000001", msd, osd, rng, state, model.args, {"k": 1}, None)
    expected_next = torch.rand(3)
    assert ckpt.is_complete(path) and ckpt.latest_checkpoint(tmp_path) == path
    assert not (tmp_path / "checkpoint_00000001.tmp").exists()

    torch.manual_seed(123)
    fresh = GPT(_args())
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    state = ckpt.restore(path, fresh, fresh_opt, rank=0)
    assert state["step"] == 1
    assert torch.equal(torch.rand(3), expected_next)  # the generator continues where it was saved
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert fresh.lm_head.weight.data_ptr() == fresh.embed.weight.data_ptr()  # still tied
    sa, sb = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    loaded = ckpt.load_model(path)
    assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoint_files_follow_the_umask_like_any_file(tmp_path, umask, mode):
    """safetensors writes 0600 whatever the umask: on shared storage colleagues could not read the weights."""
    model = GPT(_args())
    msd, _ = ckpt.full_state(model, torch.optim.AdamW(model.parameters()))
    before = os.umask(umask)
    try:
        path = ckpt.save_checkpoint(tmp_path / "c", msd, None, ckpt.gather_rng(), {"step": 0, "samples": 0,
                                    "tokens_seen": 0}, model.args, {}, None)
    finally:
        os.umask(before)
    modes = {f.name: f.stat().st_mode & 0o777 for f in path.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {mode}, modes


def test_loading_refuses_pickled_objects(tmp_path):
    """optimizer.pt is read with weights_only=True: a pickle that would run code is refused."""
    model = GPT(_args())
    opt = torch.optim.AdamW(model.parameters())
    msd, osd = ckpt.full_state(model, opt)
    state = {"step": 0, "samples": 0, "tokens_seen": 0}
    path = ckpt.save_checkpoint(tmp_path / "c", msd, osd, ckpt.gather_rng(), state, model.args, {}, None)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (path / "optimizer.pt").write_bytes(pickle.dumps({"state": Evil()}))
    with pytest.raises(pickle.UnpicklingError):
        ckpt.restore(path, model, opt, rank=0)


def test_incomplete_checkpoints_are_ignored(tmp_path):
    (tmp_path / "checkpoint_00000005").mkdir()  # a crash before trainer_state.json
    assert ckpt.latest_checkpoint(tmp_path) is None
    with pytest.raises(ckpt.CheckpointError, match="is not a gristmill checkpoint"):
        ckpt.load_model(tmp_path / "checkpoint_00000005")
    (tmp_path / "checkpoint_00000005" / ckpt.STATE_FILE).write_text(json.dumps({"step": 5, "files": {"x": 3}}))
    with pytest.raises(ckpt.CheckpointError, match="incomplete checkpoint"):  # a listed file is missing
        ckpt.load_model(tmp_path / "checkpoint_00000005")
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_model(tmp_path / "nope")


def test_mfu_is_never_above_one_and_unknown_without_a_peak():
    assert mfu(1e9, 100.0, 1, 1e12) == pytest.approx(0.1)
    assert mfu(1e9, 100.0, 2, 1e11) == pytest.approx(0.5)  # per device
    assert mfu(1e9, 300.0, 1, 1e11) is None  # the model beat the measured peak: the peak is wrong, not the model
    assert mfu(1e9, 100.0, 1, float("nan")) is None


def test_the_cpu_peak_is_measured_once_per_process():
    p = PretrainConfig()
    first = peak_flops(torch.device("cpu"), p, torch.float32)
    assert first[0] > 0 and "measured" in first[1]
    assert peak_flops(torch.device("cpu"), p, torch.float32) is first  # cached: no second measurement
    assert peak_flops(torch.device("cpu"), PretrainConfig(peak_tflops=2.0), torch.float32) == (2e12, "config")
