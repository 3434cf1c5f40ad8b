"""Statistics of a sweep, as pure functions over plain numbers (no files, no torch).

- `t_interval`: mean and Student-t confidence interval over seeds (each seed one sample: the
  training randomness is what varies between them).
- `paired_difference`: arm minus baseline, seed by seed (same seed = same data order and init
  streams on both sides), with its t interval; `resolved` is False whenever the interval holds 0.
- `bootstrap_accuracy` / `bootstrap_difference`: percentile intervals for exact-match accuracy
  pooled over test problems, resampling seeds and problems independently (two-way bootstrap), so
  the interval reflects both the finite test set and the training randomness; the difference
  resamples the same seeds and problems on both sides (paired).
- `flops_to_target`: the FLOPs at which a loss-vs-FLOPs curve first reaches a target loss,
  linearly interpolated between the two evaluations around the crossing.

The Student-t quantile is computed here (regularized incomplete beta, Lentz's continued fraction,
then bisection), so scipy is not a dependency; the tests check it against scipy where installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval; low/high are None when n is too small."""

    estimate: float
    low: float | None
    high: float | None
    n: int
    method: str  # "t" or "bootstrap"

    @property
    def contains_zero(self) -> bool:
        return self.low is None or self.high is None or self.low <= 0 <= self.high

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n, "method": self.method}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on t_cdf to 1e-12)."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def t_interval(values: list[float], level: float = LEVEL) -> Interval:
    """Mean and `level` Student-t interval: mean +- t_{(1+level)/2, n-1} * sd / sqrt(n).
    With one value the interval is undefined (low = high = None)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, None, None, 0, "t")
    mean = sum(xs) / n
    if n == 1:
        return Interval(mean, None, None, 1, "t")
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "t")


def paired_difference(arm: dict[int, float], baseline: dict[int, float], level: float = LEVEL) -> Interval:
    """arm - baseline over the seeds both have a value for, with a t interval over those seeds."""
    seeds = sorted(s for s in arm.keys() & baseline.keys() if arm[s] is not None and baseline[s] is not None)
    return t_interval([arm[s] - baseline[s] for s in seeds], level)


def verdict_words(diff: Interval) -> str:
    """'not resolved' whenever the interval contains 0 (or cannot be computed), else the sign."""
    if diff.contains_zero:
        return "not resolved"
    return "higher" if diff.estimate > 0 else "lower"


def _two_way(correct: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of a seeds x problems 0/1 matrix, resampling rows and columns independently."""
    s, p = correct.shape
    out = np.empty(samples)
    for b in range(samples):
        rows = rng.integers(0, s, s)
        cols = rng.integers(0, p, p)
        out[b] = correct[np.ix_(rows, cols)].mean()
    return out


def _percentile(estimate: float, draws: np.ndarray, n: int, level: float) -> Interval:
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(low), float(high), n, "bootstrap")


def bootstrap_accuracy(correct: np.ndarray, samples: int = 2000, seed: int = 0, level: float = LEVEL) -> Interval:
    """Pooled accuracy of a seeds x problems 0/1 matrix and its two-way percentile interval."""
    correct = np.asarray(correct, dtype=float)
    if correct.size == 0:
        return Interval(math.nan, None, None, 0, "bootstrap")
    draws = _two_way(correct, samples, np.random.default_rng(seed))
    return _percentile(float(correct.mean()), draws, correct.size, level)


def bootstrap_difference(
    arm: np.ndarray, baseline: np.ndarray, samples: int = 2000, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Pooled accuracy of `arm` minus `baseline` (both seeds x problems, rows and columns aligned),
    resampling the same seeds and problems on both sides."""
    arm, baseline = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    if arm.shape != baseline.shape:
        raise ValueError(f"paired bootstrap needs aligned matrices, got {arm.shape} and {baseline.shape}")
    if arm.size == 0:
        return Interval(math.nan, None, None, 0, "bootstrap")
    draws = _two_way(arm - baseline, samples, np.random.default_rng(seed))
    return _percentile(float((arm - baseline).mean()), draws, arm.size, level)


def flops_to_target(flops: list[float], losses: list[float], target: float) -> float | None:
    """First FLOPs at which the curve reaches `target` (linear between the evaluations around the
    crossing); None when it never does. Points must be in FLOP order."""
    prev = None
    for x, y in zip(flops, losses):
        if y <= target:
            if prev is None or prev[1] == y:
                return float(x)
            (x0, y0) = prev
            return float(x0 + (y0 - target) * (x - x0) / (y0 - y))
        prev = (x, y)
    return None
