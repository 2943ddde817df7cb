"""The statistics of an ablation's verdicts: pure functions, no training.

Each variant is trained once per seed, and so is the baseline; seed s of both starts from the same
initialisation and sees its data in the same order, so the comparison is **paired by seed**: the
differences d_s = metric(variant, s) − metric(baseline, s) carry the variant's effect without most of
the seed-to-seed noise both share.

* The interval of the mean difference is Student's t-interval of the d_s (n − 1 degrees of freedom):
  with the few seeds an ablation can afford, a bootstrap would understate the width.
* Every variant × metric comparison of a run is one hypothesis; the family is corrected with **Holm's**
  step-down procedure (it controls the chance of any false verdict at α, like Bonferroni, with more
  power). A verdict ("better"/"worse") is given only when Holm rejects "no difference". The interval
  reported with it is at Holm's level for that comparison (1 − α/(m − i + 1) for the i-th smallest
  p-value), which excludes 0 exactly when the comparison is rejected; the comparisons Holm does not
  reject get the Bonferroni level 1 − α/m, which then always includes 0.
* A multiple-choice accuracy whose every variant lies within chance ± 2 binomial standard errors says
  nothing about the data: no verdict ("at chance"). Loss per token is shown beside bits per byte but not
  tested ("secondary"): under one tokenizer it ranks variants exactly as bits per byte do, and testing
  both would double the family for no information.
* A planted-damage variant is the ablation's power check, not a finding: it is corrected in a family of
  its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _stats


def bits_per_byte(loss_nats_per_token: float, tokens: int, utf8_bytes: int) -> float:
    """A held-out loss in bits per UTF-8 byte of the text it scores: comparable across tokenizers (a
    tokenizer that makes longer tokens has a higher loss per token for the same model quality)."""
    if utf8_bytes <= 0:
        raise ValueError("bits per byte of an empty text")
    return loss_nats_per_token * tokens / utf8_bytes / math.log(2)


@dataclass(frozen=True)
class Paired:
    """The paired difference (variant − baseline) of one metric over seeds."""

    n: int
    mean: float
    se: float
    p_value: float

    def interval(self, confidence: float) -> tuple[float, float]:
        if self.n < 2:
            return (-math.inf, math.inf)
        if self.se == 0.0:
            return (self.mean, self.mean)
        half = _stats.t.ppf(0.5 + confidence / 2, self.n - 1) * self.se
        return (self.mean - half, self.mean + half)


def paired(variant: list[float], baseline: list[float]) -> Paired:
    """Student's paired t-test of the per-seed differences (two-sided)."""
    if len(variant) != len(baseline):
        raise ValueError(f"paired by seed: {len(variant)} values against {len(baseline)}")
    d = [v - b for v, b in zip(variant, baseline)]
    n = len(d)
    mean = sum(d) / n if n else 0.0
    if n < 2:
        return Paired(n, mean, math.inf, 1.0)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = float(2 * _stats.t.sf(abs(mean) / se, n - 1))
    return Paired(n, mean, se, p)


def holm(p_values: dict, alpha: float = 0.05) -> dict:
    """Per hypothesis: (rejected, Holm-adjusted p-value, the confidence level of its reported interval)."""
    order = sorted(p_values, key=lambda k: (p_values[k], str(k)))
    m = len(order)
    out, running, stopped = {}, 0.0, False
    for i, key in enumerate(order):
        level = alpha / (m - i)
        running = max(running, min(1.0, (m - i) * p_values[key]))  # adjusted p-values are monotone
        rejected = not stopped and p_values[key] < level
        stopped = stopped or not rejected
        out[key] = (rejected, running, 1 - (level if rejected else alpha / m))
    return out


def binomial_se(accuracy: float, items: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / items) if items else math.inf


def at_chance(accuracies: list[float], items: int, chance: float) -> bool:
    """Every accuracy within chance ± 2 standard errors (of a binomial with ``items`` trials at chance)."""
    band = 2 * binomial_se(chance, items)
    return all(abs(a - chance) <= band for a in accuracies)


def compare(values: dict[str, dict[str, list[float]]], baseline: str, lower_is_better: dict[str, bool],
            alpha: float = 0.05, no_verdict: dict[str, str] | set[str] | None = None,
            controls: set[str] | None = None) -> dict[tuple[str, str], dict]:
    """Every (variant, metric) against the baseline: paired difference, Holm-corrected interval and verdict.

    ``values[variant][metric]``: one value per seed, seeds in the same order for every variant.
    ``no_verdict``: metric → why it gets an interval but never a verdict ("at chance": a multiple-choice
    metric at chance; "secondary": loss per token, the same ranking as bits per byte under one tokenizer);
    such metrics stay out of the Holm family (a set: every one "at chance").
    ``controls``: variants that are a power check, not a finding (a planted-damage variant): each is
    corrected in a family of its own, so that a control neither widens the real variants' intervals nor
    is judged with them."""
    if not isinstance(no_verdict, dict):
        no_verdict = dict.fromkeys(no_verdict or (), "at chance")
    controls = controls or set()
    tests = {}
    for variant, metrics in values.items():
        if variant == baseline:
            continue
        for metric, xs in metrics.items():
            tests[(variant, metric)] = paired(xs, values[baseline][metric])
    families: dict[str, dict] = {}
    for k, t in tests.items():
        if k[1] not in no_verdict:
            families.setdefault(k[0] if k[0] in controls else "", {})[k] = t.p_value
    decided, size = {}, {}
    for family in families.values():
        decided.update(holm(family, alpha))
        size.update(dict.fromkeys(family, len(family)))
    findings = len(families.get("", {}))
    out = {}
    for key, t in tests.items():
        m = size.get(key, len(families.get(key[0], {})) if key[0] in controls else findings)
        rejected, adjusted, confidence = decided.get(key, (False, 1.0, 1 - alpha / max(m, 1)))
        lo, hi = t.interval(confidence)
        if key[1] in no_verdict:
            verdict = no_verdict[key[1]]
        elif not rejected:
            verdict = "no difference detectable"
        else:
            better = (t.mean < 0) == lower_is_better[key[1]]
            verdict = "better" if better else "worse"
        out[key] = {"difference": t.mean, "interval": [lo, hi], "confidence": confidence, "p": t.p_value,
                    "p_holm": adjusted, "n_seeds": t.n, "family": key[0] if key[0] in controls else "findings",
                    "verdict": verdict}
    return out
