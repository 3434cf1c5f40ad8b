"""The sweep's statistics against hand computations (and scipy where installed): Student-t
quantiles and intervals, paired differences and "not resolved", the two-way bootstrap, and
FLOPs to a target loss."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelsurgeon.sweep.stats import (
    bootstrap_accuracy,
    bootstrap_difference,
    flops_to_target,
    paired_difference,
    t_interval,
    t_quantile,
    verdict_words,
)

# Printed tables of t(0.975, df) (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=5e-4)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed: the printed-table test still runs")
    for df in (1, 2, 3, 5, 10, 30, 200):
        for p in (0.6, 0.9, 0.975, 0.995, 0.025):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8, abs=1e-9)


def test_t_interval_by_hand():
    # values 1, 2, 3, 6: mean 3, sample sd sqrt(((-2)^2 + 1 + 0 + 9) / 3) = sqrt(14/3)
    iv = t_interval([1, 2, 3, 6])
    half = 3.182446305284263 * math.sqrt(14 / 3) / 2
    assert (iv.estimate, iv.n) == (3, 4)
    assert iv.low == pytest.approx(3 - half, rel=1e-9) and iv.high == pytest.approx(3 + half, rel=1e-9)


def test_t_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed")
    xs = [0.31, 0.29, 0.44, 0.38, 0.35]
    low, high = stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=stats.sem(xs))
    iv = t_interval(xs)
    assert (iv.low, iv.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


def test_one_seed_gives_no_interval_and_is_not_resolved():
    iv = t_interval([0.5])
    assert (iv.estimate, iv.low, iv.high) == (0.5, None, None)
    assert verdict_words(iv) == "not resolved"


def test_paired_difference_pairs_by_seed_and_says_not_resolved_when_the_interval_holds_zero():
    arm = {0: 0.50, 1: 0.57, 2: 0.61, 7: 0.9}  # seed 7 has no baseline partner: left out
    base = {0: 0.40, 1: 0.45, 2: 0.50}
    d = paired_difference(arm, base)  # +0.10, +0.12, +0.11: sd 0.01, half-width 4.303 * 0.01 / sqrt(3)
    assert d.n == 3 and d.estimate == pytest.approx(0.11)
    assert d.low == pytest.approx(0.11 - 4.302652729911275 * 0.01 / math.sqrt(3), rel=1e-6)
    assert d.low > 0 and verdict_words(d) == "higher"
    noisy = paired_difference({0: 0.5, 1: 0.3, 2: 0.6}, {0: 0.4, 1: 0.45, 2: 0.5})  # +0.1, -0.15, +0.1
    assert noisy.low < 0 < noisy.high and verdict_words(noisy) == "not resolved"
    lower = paired_difference({0: 1.0, 1: 1.1, 2: 1.05}, {0: 1.2, 1: 1.3, 2: 1.2})
    assert verdict_words(lower) == "lower"


def test_bootstrap_accuracy_pools_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    correct = (rng.random((3, 200)) < 0.3).astype(float)
    iv = bootstrap_accuracy(correct, samples=1000, seed=0)
    assert iv.estimate == correct.mean() and iv.n == 600
    assert iv.low < iv.estimate < iv.high and iv.high - iv.low < 0.2
    # binomial standard error of the pooled mean: the percentile interval is about +-2 of them
    se = math.sqrt(0.3 * 0.7 / 600)
    assert 2 * se < iv.high - iv.low < 8 * se
    assert bootstrap_accuracy(correct, samples=1000, seed=0) == iv  # deterministic given its seed


def test_bootstrap_difference_is_paired():
    rng = np.random.default_rng(2)
    base = (rng.random((2, 300)) < 0.5).astype(float)
    same = bootstrap_difference(base, base.copy(), samples=500)
    assert (same.estimate, same.low, same.high) == (0, 0, 0) and verdict_words(same) == "not resolved"
    better = np.maximum(base, (rng.random((2, 300)) < 0.3))  # every base success kept, some added
    d = bootstrap_difference(better, base, samples=500)
    assert d.low > 0 and verdict_words(d) == "higher"
    with pytest.raises(ValueError, match="aligned"):
        bootstrap_difference(base, base[:, :10])


def test_flops_to_target_interpolates_the_first_crossing():
    flops, loss = [0, 10, 20, 30, 40], [4.0, 3.0, 2.0, 2.5, 1.0]
    assert flops_to_target(flops, loss, 2.5) == pytest.approx(15.0)  # between (10, 3.0) and (20, 2.0)
    assert flops_to_target(flops, loss, 4.5) == 0.0  # reached at the first evaluation
    assert flops_to_target(flops, loss, 2.0) == 20.0
    assert flops_to_target(flops, loss, 0.5) is None


def test_loss_at_interpolates_and_refuses_outside_the_curve():
    from modelsurgeon.sweep.aggregate import loss_at

    curve = [(0.0, 4.0), (10.0, 2.0), (30.0, 1.0)]
    assert loss_at(curve, 5.0) == 3.0 and loss_at(curve, 20.0) == 1.5 and loss_at(curve, 30.0) == 1.0
    assert loss_at(curve, 31.0) is None and loss_at(curve, -1.0) is None and loss_at(curve, None) is None


def test_equal_wall_is_the_earliest_end_of_any_run():
    from modelsurgeon.sweep.aggregate import equal_wall
    from modelsurgeon.sweep.collect import RunResult

    def run(end):
        return RunResult(
            arm="a",
            seed=0,
            dir="d",
            flops=1,
            tokens=1,
            wall_s=end,
            layers=1,
            params=1,
            final_train_loss=None,
            final_eval_loss=None,
            accuracy={},
            n={},
            curve=[(0, 1.0)],
            wall_curve=[(0.0, 2.0), (end, 1.0)],
            correct={},
            lengths={},
        )

    assert equal_wall([run(50.0), run(20.0), run(70.0)]) == 20.0


def _curve_run(arm: str, seed: int, curve: list, wall_curve: list):
    from modelsurgeon.sweep.collect import RunResult

    return RunResult(
        arm=arm,
        seed=seed,
        dir="d",
        flops=int(curve[-1][0]),
        tokens=1,
        wall_s=wall_curve[-1][0],
        layers=1,
        params=1,
        final_train_loss=None,
        final_eval_loss=curve[-1][1],
        accuracy={},
        n={},
        curve=curve,
        wall_curve=wall_curve,
        correct={},
        lengths={},
    )


def test_saving_to_the_baselines_final_loss_per_seed():
    """Baseline seed s ends at loss 1.0 after 100 FLOPs (200 s); the arm crosses 1.0 at 40, 50 and
    60 FLOPs (linear between its evaluations) and at 150 s: saved 60 / 50 / 40 % of the FLOPs and
    25 % of the wall time; a seed that never reaches the loss withholds the interval."""
    from modelsurgeon.sweep.aggregate import savings

    base = [_curve_run("b", s, [(0, 3.0), (100, 1.0)], [(0.0, 3.0), (200.0, 1.0)]) for s in range(3)]
    arm = [
        _curve_run("a", s, [(0, 3.0), (x - 10, 1.5), (x + 10, 0.5), (100, 0.4)], [(0.0, 3.0), (150.0, 1.0)])
        for s, x in enumerate((40, 50, 60))
    ]
    out = savings(arm, base)
    assert out["flops"]["per_seed"] == pytest.approx({0: 0.6, 1: 0.5, 2: 0.4})
    assert out["flops"]["interval"]["estimate"] == pytest.approx(0.5)
    assert out["flops"]["interval"]["low"] < 0.5 < out["flops"]["interval"]["high"]
    assert out["flops"]["interval"]["verdict"] == "saves"
    assert out["wall"]["per_seed"] == pytest.approx({0: 0.25, 1: 0.25, 2: 0.25})
    worse = [_curve_run("a", 2, [(0, 3.0), (100, 1.2)], [(0.0, 3.0), (200.0, 1.2)]), *arm[:2]]
    partial = savings(worse, base)["flops"]
    assert partial["per_seed"][2] is None and partial["reached"] == 2 and partial["interval"] is None
