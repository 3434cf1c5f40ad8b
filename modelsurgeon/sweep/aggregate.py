"""Per-arm statistics over seeds and paired comparisons with the baselines, from RunResults
(pure: no files). Every number in summary.json and report.md comes from here."""

from __future__ import annotations

import math

import numpy as np

from modelsurgeon.sweep.collect import RunResult
from modelsurgeon.sweep.expand import SweepManifest
from modelsurgeon.sweep.stats import (
    bootstrap_accuracy,
    bootstrap_difference,
    flops_to_target,
    paired_difference,
    t_interval,
    verdict_words,
)

SCALARS = (
    "final_eval_loss",
    "flops_to_target",
    "tokens",
    "flops",
    "wall_s",
    "wall_to_target",
    "loss_at_equal_wall",
    "loss_jump_at_growth",
)


def default_target(results: list[RunResult]) -> float | None:
    """The highest of the runs' best eval losses: the lowest loss every run reaches."""
    best = [min(y for _, y in r.curve) for r in results if r.curve]
    return max(best) if best else None


def equal_wall(results: list[RunResult]) -> float | None:
    """The wall time every run reached: the earliest of the runs' last evaluations."""
    ends = [r.wall_curve[-1][0] for r in results if r.wall_curve]
    return min(ends) if ends else None


def loss_at(curve: list[tuple[float, float]], x: float | None) -> float | None:
    """The curve's loss at x (linear between the evaluations around it); None outside the curve."""
    if x is None or not curve or x < curve[0][0] or x > curve[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[-1][1]


def run_values(r: RunResult, target: float | None, wall: float | None = None) -> dict[str, float | None]:
    """The per-run numbers the statistics are taken over (accuracies as acc:<bench>:<set>, mean
    answer losses as nll:<bench>:<set>); `wall`: the sweep's equal wall time (see equal_wall)."""

    def to_target(curve):
        return flops_to_target([x for x, _ in curve], [y for _, y in curve], target) if target is not None else None

    out = {
        "final_eval_loss": r.final_eval_loss,
        "flops_to_target": to_target(r.curve),
        "tokens": r.tokens,
        "flops": r.flops,
        "wall_s": r.wall_s,
    }
    if r.growth_jumps:
        out["loss_jump_at_growth"] = sum(r.growth_jumps) / len(r.growth_jumps)
    if r.wall_curve:
        out["wall_to_target"] = to_target(r.wall_curve)
        out["loss_at_equal_wall"] = loss_at(r.wall_curve, wall)
    out.update({f"acc:{k}": v for k, v in r.accuracy.items()})
    out.update({f"nll:{k}": v for k, v in r.answer_loss.items()})
    return out


def _matrix(runs: list[RunResult], key: str, seeds: list[int], ids: list[str]) -> np.ndarray:
    by_seed = {r.seed: r.correct.get(key, {}) for r in runs}
    return np.array([[by_seed[s][i] for i in ids] for s in seeds], dtype=float)


def _common_ids(runs: list[RunResult], key: str) -> list[str]:
    sets = [set(r.correct.get(key, {})) for r in runs]
    return sorted(set.intersection(*sets)) if sets else []


def _by_length(runs: list[RunResult], key: str, field: str = "correct") -> dict[str, dict]:
    """Per chain length: t interval over seeds of each seed's mean of `field` (per-problem
    correct -> accuracy, or nll -> answer loss) at that length."""
    lengths = sorted({v for r in runs for v in r.lengths.get(key, {}).values()})
    out = {}
    for length in lengths:
        per_seed = []
        for r in runs:
            values = getattr(r, field).get(key, {})
            ids = [i for i, v in r.lengths.get(key, {}).items() if v == length and i in values]
            if ids:
                per_seed.append(sum(values[i] for i in ids) / len(ids))
        if per_seed:
            out[str(length)] = {**t_interval(per_seed).as_dict(), "per_seed": per_seed}
    return out


def arm_stats(runs: list[RunResult], target: float | None, samples: int, wall: float | None = None) -> dict:
    values = [run_values(r, target, wall) for r in runs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    stats = {k: t_interval([v.get(k) for v in values]).as_dict() for k in keys}
    pooled, lengths, nll_lengths = {}, {}, {}
    for key in dict.fromkeys(k for r in runs for k in r.correct):
        ids = _common_ids(runs, key)
        seeds = sorted(r.seed for r in runs)
        pooled[key] = bootstrap_accuracy(_matrix(runs, key, seeds, ids), samples).as_dict()
        lengths[key] = _by_length(runs, key)
        if any(key in r.nll for r in runs):
            nll_lengths[key] = _by_length(runs, key, "nll")
    reached = sum(v["flops_to_target"] is not None for v in values)
    return {
        "seeds": sorted(r.seed for r in runs),
        "t": stats,
        "pooled_accuracy": pooled,
        "accuracy_by_length": lengths,
        "answer_loss_by_length": nll_lengths,
        "reached_target": reached,
        "per_seed": {r.seed: v for r, v in zip(runs, values)},
    }


def _saved(curve: list, base_curve: list) -> float | None:
    """1 - (x where `curve` first reaches the last loss of `base_curve`) / (base_curve's last x):
    the share of the baseline's FLOPs (or wall time) the arm needed less to reach the loss the
    baseline ended at. None when the arm never reaches it."""
    if not curve or not base_curve or base_curve[-1][0] <= 0:
        return None
    reached = flops_to_target([x for x, _ in curve], [y for _, y in curve], base_curve[-1][1])
    return None if reached is None else 1.0 - reached / base_curve[-1][0]


def savings(arm: list[RunResult], base: list[RunResult]) -> dict:
    """The published anchors' measure (G_stack: "54.6% fewer FLOPs to the same loss"), per seed
    against that seed's baseline run, on the FLOP and the wall-clock axis. The interval is over
    the seeds only when the arm reached the baseline's final loss in every one of them: a mean
    over the seeds that reached it would hide the ones that did not."""
    b = {r.seed: r for r in base}
    out = {}
    for axis, get in (("flops", lambda r: r.curve), ("wall", lambda r: r.wall_curve)):
        per_seed = {r.seed: _saved(get(r), get(b[r.seed])) for r in arm if r.seed in b}
        reached = [v for v in per_seed.values() if v is not None]
        interval = t_interval(reached) if per_seed and len(reached) == len(per_seed) else None
        out[axis] = {
            "per_seed": per_seed,
            "reached": len(reached),
            "seeds": len(per_seed),
            "interval": None if interval is None else {**interval.as_dict(), "verdict": _saving_words(interval)},
        }
    return out


def _saving_words(saved) -> str:
    return {"higher": "saves", "lower": "costs more"}.get(verdict_words(saved), "not resolved")


def compare(
    arm: list[RunResult], base: list[RunResult], target: float | None, samples: int, wall: float | None = None
) -> dict:
    """Arm minus baseline: paired by seed (t) for every number, and paired by seed and problem
    (two-way bootstrap) for pooled accuracies; 'not resolved' whenever the interval holds 0."""
    a = {r.seed: run_values(r, target, wall) for r in arm}
    b = {r.seed: run_values(r, target, wall) for r in base}
    keys = list(dict.fromkeys(k for v in a.values() for k in v if any(k in w for w in b.values())))
    out = {"seeds": sorted(a.keys() & b.keys()), "t": {}, "bootstrap": {}, "savings": savings(arm, base)}
    for k in keys:
        if k.startswith("acc:"):
            # Exact match is compared by the paired bootstrap below (seeds and problems): a t
            # interval over 3 seeds of a discrete score near 0 can have zero width by chance
            # (each seed one problem apart) and would call a difference resolved.
            continue
        d = paired_difference({s: v.get(k) for s, v in a.items()}, {s: v.get(k) for s, v in b.items()})
        out["t"][k] = {**d.as_dict(), "verdict": verdict_words(d)}
    seeds = out["seeds"]
    for key in dict.fromkeys(k for r in arm for k in r.correct):
        both = [r for r in arm + base if r.seed in seeds]
        ids = _common_ids(both, key) if both else []
        if not ids:
            continue
        d = bootstrap_difference(
            _matrix([r for r in arm if r.seed in seeds], key, seeds, ids),
            _matrix([r for r in base if r.seed in seeds], key, seeds, ids),
            samples,
        )
        out["bootstrap"][key] = {**d.as_dict(), "verdict": verdict_words(d)}
    return out


def aggregate(manifest: SweepManifest, results: list[RunResult], compare_to: str | None = None) -> dict:
    """summary.json's statistics: per arm over seeds, each grown arm against its baselines, and
    every other arm against the reference arm `compare_to` (default: the sweep's `compare_to`)."""
    target = manifest.target_loss if manifest.target_loss is not None else default_target(results)
    by_arm = {a.name: [r for r in results if r.arm == a.name] for a in manifest.arms}
    wall = equal_wall(results)
    arms = {name: arm_stats(runs, target, manifest.bootstrap_samples, wall) for name, runs in by_arm.items() if runs}
    comparisons = {}
    reference = compare_to or manifest.compare_to
    for arm in manifest.arms:
        pairs = list(arm.pairs) if arm.kind == "grown" else []
        if reference and arm.name != reference and reference not in pairs:
            pairs.append(reference)
        for base in pairs:
            if by_arm[arm.name] and by_arm.get(base):
                comparisons[f"{arm.name} vs {base}"] = {
                    "arm": arm.name,
                    "baseline": base,
                    **compare(by_arm[arm.name], by_arm[base], target, manifest.bootstrap_samples, wall),
                }
    return {
        "target_loss": target,
        "target_loss_source": "sweep" if manifest.target_loss is not None else "default",
        "equal_wall_s": wall,
        "compared_to": reference,
        "arms_stats": arms,
        "comparisons": comparisons,
    }


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
