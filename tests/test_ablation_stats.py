"""The ablation's statistics: paired intervals, Holm's correction, verdicts that can be trusted."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats

from gristmill.trainer import ablation_stats as st


def test_bits_per_byte_converts_nats_per_token():
    # 1,000 tokens at ln(2) nats each over 500 bytes: 2 bits per byte
    assert st.bits_per_byte(math.log(2), 1000, 500) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        st.bits_per_byte(1.0, 10, 0)


def test_paired_test_is_students_on_the_per_seed_differences():
    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.1, 6)
    var = base + rng.normal(-0.05, 0.02, 6)
    t = st.paired(list(var), list(base))
    ref = stats.ttest_rel(var, base)
    assert t.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    lo, hi = t.interval(0.95)
    ci = ref.confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert t.n == 6 and t.mean == pytest.approx(float((var - base).mean()))
    with pytest.raises(ValueError, match="paired by seed"):
        st.paired([1.0, 2.0], [1.0])


def test_holm_step_down():
    got = st.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}, alpha=0.05)
    assert {k: v[0] for k, v in got.items()} == {"d": True, "a": True, "c": False, "b": False}
    assert {k: round(v[1], 6) for k, v in got.items()} == {"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06}
    assert got["d"][2] == pytest.approx(1 - 0.05 / 4) and got["a"][2] == pytest.approx(1 - 0.05 / 3)
    assert got["c"][2] == pytest.approx(1 - 0.05 / 4)  # not rejected: the Bonferroni level


def test_a_verdict_exactly_when_the_corrected_interval_excludes_zero():
    rng = random.Random(1)
    for _ in range(200):
        seeds = rng.randint(2, 8)
        values = {v: {m: [rng.gauss(0, 1) + (rng.choice([0, 0, 1.5]) if v != "base" else 0) for _ in range(seeds)]
                      for m in ("heldout:a", "heldout:b", "heldout:c")} for v in ("base", "x", "y", "z")}
        out = st.compare(values, "base", {m: True for m in ("heldout:a", "heldout:b", "heldout:c")})
        for r in out.values():
            lo, hi = r["interval"]
            excludes = lo > 0 or hi < 0
            assert excludes == (r["verdict"] in ("better", "worse")), r
            if r["verdict"] == "better":  # lower is better: the whole interval is below 0
                assert hi < 0


def test_false_verdicts_are_rare_and_real_effects_are_found():
    """The shipped table's shape: 8 variants x 3 metrics against a baseline, 5 seeds. With no effect
    anywhere, the chance of at least one false verdict stays near α (the previous rule, "difference
    larger than both spreads", gave ~70 %); a paired effect of 2 seed-standard-deviations is found."""
    rng = np.random.default_rng(7)
    metrics = {f"heldout:{i}": True for i in range(3)}
    variants = [f"v{i}" for i in range(8)]

    def family(effect: float) -> dict:
        seed_noise = rng.normal(0, 1, (len(metrics), 5))  # shared by every variant of a seed (pairing)
        values = {"base": {m: list(3 + seed_noise[j] + rng.normal(0, 0.3, 5)) for j, m in enumerate(metrics)}}
        for v in variants:
            values[v] = {m: list(3 + seed_noise[j] + rng.normal(0, 0.3, 5) - effect) for j, m in enumerate(metrics)}
        return st.compare(values, "base", metrics)

    trials = 400
    any_false = sum(any(r["verdict"] != "no difference detectable" for r in family(0.0).values())
                    for _ in range(trials))
    assert any_false / trials < 0.09, any_false
    found = [r["verdict"] for _ in range(50) for r in family(4 * 0.3 * math.sqrt(2)).values()]
    assert found.count("better") / len(found) > 0.5 and found.count("worse") == 0


def test_multiple_choice_at_chance_gets_no_verdict():
    assert st.at_chance([0.26, 0.24, 0.27], items=200, chance=0.25)
    assert not st.at_chance([0.26, 0.40], items=200, chance=0.25)
    values = {"base": {"mc:x": [0.25, 0.26, 0.24]}, "v": {"mc:x": [0.30, 0.31, 0.29]}}
    out = st.compare(values, "base", {"mc:x": False}, no_verdict={"mc:x"})
    assert out[("v", "mc:x")]["verdict"] == "at chance"
    assert st.binomial_se(0.5, 100) == pytest.approx(0.05)


def test_secondary_metrics_and_controls_stay_out_of_the_findings_family():
    """Loss per token (the same ranking as bits per byte) is shown, not tested; a planted-damage control is
    corrected in a family of its own: neither widens the real variants' intervals."""
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.01, 5)
    values = {"base": {"bpb:a": list(3 + noise), "heldout:a": list(6 + noise), "bpb:b": list(2 + noise)}}
    for v, effect in (("x", -0.05), ("y", 0.0), ("damaged", 0.2)):
        values[v] = {m: [b + effect + e for b, e in zip(values["base"][m], rng.normal(0, 0.01, 5))]
                     for m in values["base"]}
    lower = dict.fromkeys(values["base"], True)
    out = st.compare(values, "base", lower, no_verdict={"heldout:a": "secondary"}, controls={"damaged"})
    assert out[("x", "heldout:a")]["verdict"] == "secondary"
    assert out[("damaged", "bpb:a")]["verdict"] == "worse" and out[("damaged", "bpb:a")]["family"] == "damaged"
    # the findings' family: x and y on bpb:a and bpb:b, 4 hypotheses; the control's: its 2
    assert out[("y", "bpb:a")]["confidence"] == pytest.approx(1 - 0.05 / 4)
    assert out[("damaged", "bpb:b")]["confidence"] in (pytest.approx(1 - 0.05 / 2), pytest.approx(1 - 0.05))
    # the same table with the control and the secondary metric in the family: wider intervals for x and y
    joint = st.compare(values, "base", lower)
    assert joint[("y", "bpb:a")]["confidence"] > out[("y", "bpb:a")]["confidence"]
    assert {joint[("y", "bpb:a")]["family"], out[("x", "bpb:b")]["family"]} == {"findings"}
