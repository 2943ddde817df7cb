"""Training mixtures: proportions, determinism, exact resume, per-source epochs, bad weights and caps."""

from __future__ import annotations

import numpy as np
import pytest

from gristmill.trainer.mixture import (
    MixedStream,
    MixtureError,
    MixtureSource,
    block_counts,
    block_pattern,
    format_plan,
    plan,
)

MASSIVETEXT = [("web", 0.48, 5_000), ("books", 0.27, 900), ("c4", 0.10, 3_000), ("news", 0.10, 2_000),
               ("code", 0.03, 400), ("wikipedia", 0.02, 50)]


def sources(spec=MASSIVETEXT, caps=None):
    caps = caps or {}
    return [MixtureSource(name, w, n, caps.get(name)) for name, w, n in spec]


@pytest.mark.parametrize("total", [1_000, 12_345, 100_000])
def test_every_source_gets_its_share_within_one_percent(total):
    stream = MixedStream(sources(), seed=0)
    src, _ = stream.indices(0, total)
    share = np.bincount(src, minlength=len(MASSIVETEXT)) / total
    for (name, w, _), got in zip(MASSIVETEXT, share):
        assert abs(got - w) <= 0.01, (name, got, w)
    assert np.array_equal(np.bincount(src, minlength=len(MASSIVETEXT)), stream.samples_used(total))


def test_every_prefix_of_a_block_is_within_one_sample_of_the_shares():
    counts = block_counts([0.48, 0.27, 0.1, 0.1, 0.03, 0.02], 1_000)
    assert counts.tolist() == [480, 270, 100, 100, 30, 20]
    pattern = block_pattern(counts)
    seen = np.zeros(len(counts))
    for p, s in enumerate(pattern, 1):
        seen[s] += 1
        assert np.all(np.abs(seen - counts / 1_000 * p) < 1.0 + 1e-9)


def test_largest_remainder_rounding_sums_to_the_block():
    counts = block_counts([1, 1, 1], 10)
    assert counts.sum() == 10 and sorted(counts.tolist()) == [3, 3, 4]
    assert counts.tolist() == [4, 3, 3]  # ties to the earlier source: deterministic


def test_the_stream_is_deterministic_and_resumes_exactly():
    a = MixedStream(sources(), seed=3)
    b = MixedStream(sources(), seed=3)
    whole = a.indices(0, 25_000)
    # read in uneven chunks, as micro-batches of a resumed run on another number of workers would
    pieces, start = [], 0
    for size in [7, 993, 8_000, 1, 15_999]:
        pieces.append(b.indices(start, size))
        start += size
    assert np.array_equal(whole[0], np.concatenate([p[0] for p in pieces]))
    assert np.array_equal(whole[1], np.concatenate([p[1] for p in pieces]))
    other = MixedStream(sources(), seed=4).indices(0, 25_000)
    assert np.array_equal(whole[0], other[0])  # the schedule of sources does not depend on the seed
    assert not np.array_equal(whole[1], other[1])  # the order within each source does


def test_a_source_repeats_only_after_all_its_sequences_were_read():
    stream = MixedStream(sources(), seed=0)
    src, seq = stream.indices(0, 30_000)
    wiki = seq[src == 5]  # 50 sequences, 2 % of 30,000 samples = 600 reads = 12 epochs
    assert len(wiki) == 600
    for e in range(12):
        assert sorted(wiki[e * 50:(e + 1) * 50].tolist()) == list(range(50))
    assert not np.array_equal(wiki[:50], wiki[50:100])  # a new order every epoch
    books = seq[src == 1]
    assert len(set(books[:900].tolist())) == 900 and books.max() < 900


def test_plan_reports_tokens_and_epochs_and_refuses_an_exceeded_cap():
    stream = MixedStream(sources(caps={"wikipedia": 20}), seed=0)
    rows = plan(stream, 30_000, seq_len=256)
    wiki = next(r for r in rows if r["source"] == "wikipedia")
    assert wiki["tokens_used"] == 600 * 256 and wiki["tokens_available"] == 50 * 256 and wiki["epochs"] == 12.0
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-9
    assert "wikipedia" in format_plan(rows)
    capped = MixedStream(sources(caps={"wikipedia": 4, "code": 100}), seed=0)
    with pytest.raises(MixtureError, match=r"'wikipedia' would be read 12.00 times \(max_epochs 4\)"):
        plan(capped, 30_000, seq_len=256)
    plan(capped, 10_000, seq_len=256)  # 200 reads of 50 sequences = 4 epochs: allowed


@pytest.mark.parametrize("spec, message", [
    ([("a", -0.5, 10), ("b", 1.0, 10)], "weight -0.5 must be a number ≥ 0"),
    ([("a", 0.0, 10), ("b", 0.0, 10)], "every mixture weight is 0"),
    ([("a", 1.0, 10), ("a", 1.0, 10)], "names repeat"),
    ([("a", 1.0, 10), ("b", 1e-9, 10)], "below one sample"),
    ([("a", 1.0, 10), ("b", 1.0, 0)], "no train sequences"),
    ([], "no sources"),
])
def test_bad_weights_are_refused_with_the_source_named(spec, message):
    with pytest.raises(MixtureError, match=message):
        MixedStream(sources(spec), seed=0)


def test_zero_weight_source_with_others_is_refused_only_if_it_gets_nothing():
    # a zero weight is a legal "off" only when stated; here it cannot get a sample: refused clearly
    with pytest.raises(MixtureError, match="'b': weight 0.0 is below one sample"):
        MixedStream(sources([("a", 1.0, 10), ("b", 0.0, 10)]), seed=0)
