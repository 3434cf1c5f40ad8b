"""report.md of a sweep, from summary.json's data: arms, per-arm means with 95% intervals over
seeds, paired differences against the baselines with "not resolved" wherever the interval holds
0, the tuning grids and their choices, the plots, and how to read them."""

from __future__ import annotations

import math

LABELS = {
    "final_eval_loss": "final eval loss",
    "flops_to_target": "FLOPs to target",
    "tokens": "tokens",
    "flops": "training FLOPs",
    "wall_s": "wall time (s)",
    "wall_to_target": "wall time to target (s)",
    "loss_at_equal_wall": "eval loss at equal wall time",
    "loss_jump_at_growth": "eval-loss jump at growth",
}


def _num(x, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _fmt_for(key: str) -> str:
    if key.startswith("acc:"):
        return ".3f"
    if key in ("final_eval_loss", "loss_at_equal_wall", "loss_jump_at_growth") or key.startswith("nll:"):
        return ".4f"
    return ".1f" if key in ("wall_s", "wall_to_target") else ".3e"


def _ci(s: dict, fmt: str) -> str:
    if s["low"] is None:
        return f"{_num(s['estimate'], fmt)} (n = {s['n']}, no interval)"
    return f"{_num(s['estimate'], fmt)} [{_num(s['low'], fmt)}, {_num(s['high'], fmt)}]"


def _label(key: str) -> str:
    if key.startswith("nll:"):
        return f"answer loss {key[4:]}"
    return f"exact match {key[4:]}" if key.startswith("acc:") else LABELS.get(key, key)


def _arm_rows(summary: dict) -> list[str]:
    tuned = {t for t, v in summary["tuning"].items() if v["chosen"] is not None}
    out = ["| arm | kind | axes | paired with | tuned |", "|---|---|---|---|---|"]
    for a in summary["arms"]:
        axes = ", ".join(f"{k}={v}" for k, v in a["axes"].items()) or "-"
        how = ("yes: " + ", ".join(a["tuned"])) if a["tuned"] else "no (the recipe's values)"
        if a["tuned"] and a["name"] not in tuned:
            how += " (grid unfinished)"
        out.append(f"| {a['name']} | {a['kind']} | {axes} | {', '.join(a['pairs']) or '-'} | {how} |")
    return out


def _stat_rows(summary: dict) -> list[str]:
    arms = summary["arms_stats"]
    keys = list(dict.fromkeys(k for a in arms.values() for k in a["t"]))
    keys = [k for k in keys if k.startswith(("acc:", "nll:"))] + [k for k in LABELS if k in keys]
    out = ["| arm | seeds | " + " | ".join(_label(k) for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, a in arms.items():
        cells = [_ci(a["t"][k], _fmt_for(k)) if k in a["t"] else "-" for k in keys]
        out.append(f"| {name} | {len(a['seeds'])} | " + " | ".join(cells) + " |")
    intro = (
        "Exact match pooled over seeds and test problems, with a two-way bootstrap 95% interval "
        "(seeds and problems resampled):"
    )
    pooled = ["", intro, "", "| arm | test set | accuracy [95% CI] | problems x seeds |", "|---|---|---|---|"]
    for name, a in arms.items():
        pooled += [f"| {name} | {k} | {_ci(s, '.3f')} | {s['n']} |" for k, s in a["pooled_accuracy"].items()]
    source = (
        "set by the sweep"
        if summary["target_loss_source"] == "sweep"
        else "the highest of the runs' best losses, so every run reaches it"
    )
    counts = ", ".join(f"{n} {a['reached_target']}/{len(a['seeds'])}" for n, a in arms.items())
    reached = (
        f"FLOPs to target: the first point where the eval loss reaches {_num(summary['target_loss'], '.4f')} "
        f"({source}), linear between evaluations. Runs reaching it: {counts}."
    )
    wall = summary.get("equal_wall_s")
    matched = (
        ""
        if wall is None
        else f"Wall-clock matched: the eval loss of every run at {wall:.1f} s of its own training time (the earliest "
        "of the runs' last evaluations; stage load, training and save, and the surgery, but not the test-set "
        "scoring between stages), linear between evaluations; wall time to target is the same clock. Wall "
        "times are one machine's, with the sweep's workers sharing it: compare arms of one sweep only."
    )
    return [*out, *pooled, "", reached, "", matched]


def _diff_rows(summary: dict) -> list[str]:
    if not summary["comparisons"]:
        return ["No baseline in this sweep, so there is no paired comparison."]
    out = [
        "| comparison | number | difference (arm - baseline or reference) [95% CI] | seeds | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, c in summary["comparisons"].items():
        for k, d in c["t"].items():
            out.append(
                f"| {name} | {_label(k)} (paired t over seeds) | {_ci(d, _fmt_for(k))} | {d['n']} | {d['verdict']} |"
            )
        for k, d in c["bootstrap"].items():
            out.append(
                f"| {name} | exact match {k} (paired bootstrap, seeds x problems) | {_ci(d, '.3f')} | "
                f"{len(c['seeds'])} | {d['verdict']} |"
            )
    return out


def _tuning_rows(summary: dict) -> list[str]:
    if not summary["tuning"]:
        return ["Nothing was tuned: every arm trains with its recipe's learning rates."]
    out = ["| arm | grid point | values | validation loss | chosen |", "|---|---|---|---|---|"]
    for arm, t in summary["tuning"].items():
        for p in t["points"]:
            chosen = "**yes**" if t["chosen"] and p["dir"] == t["chosen"]["dir"] else ""
            values = "; ".join(f"{k} = {', '.join(_num(x, '.3g') for x in v)}" for k, v in p["values"].items())
            out.append(
                f"| {arm} | {p['dir'].rsplit('/', 1)[-1]} | {values} | {_num(p['val_loss'], '.4f')} | {chosen} |"
            )
        ends = [p["dir"] for p in (t["points"][0], t["points"][-1])]
        if t["chosen"] and len(t["paths"]) == 1 and t["chosen"]["dir"] in ends:
            edge = (
                "the choice is at the edge of the grid: the best value may lie beyond it; "
                "widen tuning.factor or tuning.points"
            )
            out.append(f"| {arm} | ({edge}) | | | |")
    seed = next(iter(summary["tuning"].values()))["seed"]
    out.append(
        f"\nGrid points trained at tuning seed {seed} (not a reported seed), with the arm's budget; chosen by "
        "final validation loss (train-stage's held-out share of the training data), never the test problems."
    )
    return out


NOTES = """## How to read this report

- Each arm ran once per seed. A seed changes everything random in a run (initialisation, which
  training problems are drawn and their order, dropout, LoRA initialisation); the test problems
  are the same for every run, so differences between arms compare the same problems.
- Means come with a 95% Student-t interval over seeds (mean +- t(0.975, n-1) sd / sqrt(n)); with
  one seed there is no interval. Differences against a baseline are paired by seed (arm minus
  baseline, same seed) and get the same t interval, except exact match: its differences get a
  paired two-way bootstrap interval (the same seeds and test problems resampled on both sides),
  which accounts for the finite test set too (a t interval over 3 seeds of a score near 0 can
  have zero width by chance). **"not resolved"**: the interval contains 0, so this sweep
  cannot tell the two apart; "higher"/"lower": the interval excludes 0.
- Final eval loss is the validation loss on train-stage's held-out documents: with `eval_tokens`
  in the recipe, one fixed set per seed for every stage, arm and baseline; without it, a share
  of each run's own draw (then runs of different budgets score different documents). Exact
  match is on the test sets (never trained on): interpolation (chain lengths or modules as in
  training) and extrapolation (longer chains). Answer loss is
  the mean teacher-forced loss (nats per token) of each test answer and its end, given the
  question: lower is better, and it still ranks models whose exact match is at the floor.
- Baselines are trained from scratch with their steps matched to the grown arm's planned FLOPs
  (or tokens). Wall time is measured on the machine as it was (shared and busy, possibly);
  compare arms by FLOPs, and read wall time beside it.
"""


def _saving_cell(axis: dict) -> str:
    if axis["interval"] is None:
        return f"- (reached in {axis['reached']} of {axis['seeds']} seeds)"
    i = axis["interval"]
    pct = {k: (None if i[k] is None else 100 * i[k]) for k in ("estimate", "low", "high")}
    return f"{_ci({**i, **pct}, '.1f')} % ({i['verdict']})"


def _saving_rows(summary: dict) -> list[str]:
    rows = [(n, c["savings"]) for n, c in summary["comparisons"].items() if c.get("savings")]
    if not rows:
        return []
    out = [
        "Saving to the baseline's final loss (the published anchors' measure): per seed, 1 - (FLOPs, or"
        " wall time, at which the arm first reaches the final eval loss of that seed's baseline or"
        " reference run) / (that run's FLOPs, or wall time); mean [95% t CI] over seeds, given only"
        " when the arm reached that loss in every seed.",
        "",
        "| comparison | FLOPs saved | wall time saved |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {_saving_cell(s['flops'])} | {_saving_cell(s['wall'])} |" for name, s in rows]
    return out


def render(summary: dict, out_dir: str) -> str:
    made = (
        f"Produced by: `surgeon sweep {summary['sweep_file']} -o {out_dir}` (base recipe `{summary['recipe_file']}`); "
        f"`surgeon sweep report {out_dir}` rewrites it from the finished runs."
    )
    missing = f" Missing: {', '.join(summary['missing'])}." if summary["missing"] else ""
    lines = [
        f"# Sweep report: {summary['sweep']}",
        "",
        summary["description"].strip(),
        "",
        made,
        "",
        f"Finished runs: {summary['finished']} of {summary['expected']} (seeds {summary['seeds']}).{missing}",
        "",
        "## Arms",
        "",
        *_arm_rows(summary),
        "",
        "## Results per arm (mean [95% CI] over seeds)",
        "",
        *_stat_rows(summary),
        "",
        "## Against the baseline or reference arm (paired by seed)",
        "",
        *_diff_rows(summary),
        "",
        *(rows + [""] if (rows := _saving_rows(summary)) else []),
        "## Tuning",
        "",
        *_tuning_rows(summary),
        "",
        "## Plots",
        "",
        "![loss vs FLOPs](loss_vs_flops.png)",
        "",
        "![accuracy by chain length](accuracy_by_length.png)",
        "",
        "![FLOPs to target](flops_to_target.png)",
        "",
        "![answer loss by chain length](answer_loss_by_length.png)",
        "",
        NOTES,
    ]
    return "\n".join(lines)
