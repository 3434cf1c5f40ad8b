"""RUN_DIR/report.md, summary.json and the plots, computed from the stage records and each
stage's metrics.jsonl / grad_norms.jsonl (never from the plan), so they describe what ran."""

from __future__ import annotations

import json
import math
from pathlib import Path

from modelsurgeon.data.spec import arith_options, parse_data_spec
from modelsurgeon.progressive import plots
from modelsurgeon.progressive.monitor import read_jsonl
from modelsurgeon.progressive.planning import RecipePlan
from modelsurgeon.progressive.report_md import render

PLOTS = ("loss_vs_flops.png", "accuracy_by_k.png", "params_over_time.png", "grad_norms.png")


def train_max_k(data: list[str]) -> int | None:
    """The longest chain in the training data (synthetic:arith specs), or None."""

    ks = [arith_options(s)["max_k"] for s in map(parse_data_spec, data) if s.source.startswith("synthetic:arith")]
    return max(ks) if ks else None


def _mean_acc(acc: dict | None, keep) -> dict | None:
    """Pooled accuracy and problem count over the chain lengths `keep(k)` selects."""
    if not acc:
        return None
    chosen = [v for k, v in acc.items() if keep(int(k))]
    n = sum(v["n"] for v in chosen)
    return {"accuracy": sum(v["accuracy"] * v["n"] for v in chosen) / n, "n": n} if n else None


def _run_summary(records: list[dict], k_max: int | None) -> dict:
    trains = [r for r in records if r["kind"] == "train"]
    last = trains[-1] if trains else {}
    acc = last.get("accuracy_by_k")
    short = _mean_acc(acc, lambda k: k_max is None or k <= k_max)
    long = _mean_acc(acc, lambda k: k_max is not None and k > k_max)
    return {
        "flops": sum(r["flops"] for r in records),
        "tokens": sum(r["tokens"] for r in records),
        "wall_s": round(sum(r["wall_s"] for r in records), 2),
        "layers": records[-1]["layers"] if records else 0,
        "params": records[-1]["params"] if records else 0,
        "final_train_loss": last.get("final_train_loss"),
        "final_eval_loss": last.get("final_eval_loss"),
        "accuracy_by_k": acc,
        "accuracy_trained_k": short,
        "accuracy_longer_k": long,
        "tests": last.get("tests") or {},
    }


def _compare(name: str, a: dict | None, b: dict | None, what: str) -> str:
    if a is None or b is None:
        return ""
    a, b = (a["accuracy"], a["n"]), (b["accuracy"], b["n"])
    se = math.sqrt(a[0] * (1 - a[0]) / a[1] + b[0] * (1 - b[0]) / b[1])
    diff = a[0] - b[0]
    if diff == 0:
        side = "equal"
    elif abs(diff) <= 2 * se:
        side = f"the difference ({diff:+.3f}) is within two standard errors ({2 * se:.3f}): not resolved by this eval"
    else:
        side = (
            f"{'progressive' if diff > 0 else name} is higher by {abs(diff):.3f} (more than two standard "
            f"errors, {2 * se:.3f})"
        )
    return f"exact-match accuracy on {what}: progressive {a[0]:.3f} vs {name} {b[0]:.3f} (n = {a[1]} / {b[1]}); {side}."


def verdict(runs: dict[str, dict], k_max: int | None) -> list[str]:
    """One neutral paragraph per baseline, computed from the numbers."""
    p, lines = runs["progressive"], []
    for name, b in runs.items():
        if name == "progressive":
            continue
        parts = [
            f"**{name}** ({b['layers']} layers, {b['flops']:.3g} FLOPs = {b['flops'] / max(p['flops'], 1):.3f}x "
            f"the progressive run's {p['flops']:.3g}):"
        ]
        if p["final_eval_loss"] is not None and b["final_eval_loss"] is not None:
            d = p["final_eval_loss"] - b["final_eval_loss"]
            who = "equal" if d == 0 else ("lower for progressive" if d < 0 else f"lower for {name}")
            parts.append(
                f"final eval loss progressive {p['final_eval_loss']:.4f} vs {name} {b['final_eval_loss']:.4f} "
                f"({who}, by {abs(d):.4f})."
            )
        parts.append(
            _compare(name, p["accuracy_trained_k"], b["accuracy_trained_k"], f"trained chain lengths (k <= {k_max})")
        )
        parts.append(_compare(name, p["accuracy_longer_k"], b["accuracy_longer_k"], f"longer chains (k > {k_max})"))
        lines.append(" ".join(x for x in parts if x))
    return lines or ["No baseline in this recipe, so there is no comparison at equal compute."]


def _curves(records: list[dict]) -> dict:
    """Train/eval loss points of consecutive stages on the cumulative-FLOP axis."""
    c = {"train_x": [], "train_loss": [], "eval_x": [], "eval_loss": []}
    for r in records:
        if r["kind"] != "train":
            continue
        start = r["cum_flops"] - r["flops"]
        for row in read_jsonl(Path(r["model"]) / "metrics.jsonl"):
            x = start + row["tokens"] * r["flops_per_token"]
            if "loss" in row:
                c["train_x"].append(x), c["train_loss"].append(row["loss"])
            if "eval_loss" in row:
                c["eval_x"].append(x), c["eval_loss"].append(row["eval_loss"])
    return c


def _grad_rows(records: list[dict]) -> tuple[list[dict], list[int]]:
    rows, offset, growths = [], 0, []
    for r in records:
        if r["kind"] == "grow":
            growths.append(offset)
            continue
        rows += [{**g, "step": g["step"] + offset} for g in read_jsonl(Path(r["model"]).parent / "grad_norms.jsonl")]
        offset += r["steps"]
    return rows, growths


def _cumulate(records: list[dict]) -> list[dict]:
    """Records with cumulative FLOPs and, for train stages, the eval loss before the first step
    (right after a growth: how far the growth moved the model), from metrics.jsonl."""
    total, out = 0, []
    for r in records:
        total += r["flops"]
        extra = {}
        if r["kind"] == "train":
            rows = read_jsonl(Path(r["model"]) / "metrics.jsonl")
            extra["initial_eval_loss"] = next(
                (x["eval_loss"] for x in rows if x["step"] == 0 and "eval_loss" in x), None
            )
        out.append({**r, **extra, "cum_flops": total})
    return out


def write_report(run_dir: Path, plan: RecipePlan, records: list[dict], baselines: dict[str, dict]) -> dict:
    r = plan.loaded.recipe
    k_max = train_max_k(r.data)
    records = _cumulate(records)
    base = {n: _cumulate([{"stage": "01-train", **b}]) for n, b in baselines.items()}
    runs = {"progressive": _run_summary(records, k_max), **{n: _run_summary(b, k_max) for n, b in base.items()}}
    curves = {"progressive": _curves(records), **{n: _curves(b) for n, b in base.items()}}
    growths = [s["cum_flops"] for s in records if s["kind"] == "grow"]
    plots.loss_vs_flops(curves, growths, run_dir / PLOTS[0])
    plots.accuracy_by_k({n: v["accuracy_by_k"] for n, v in runs.items()}, k_max, run_dir / PLOTS[1])
    plots.params_over_time(records, {n: b[0] for n, b in base.items()}, run_dir / PLOTS[2])
    grads, growth_steps = _grad_rows(records)
    plots.grad_norms(
        {"progressive": grads, **{n: _grad_rows(b)[0] for n, b in base.items()}}, growth_steps, run_dir / PLOTS[3]
    )
    summary = {
        "recipe": r.name,
        "recipe_file": plan.loaded.origin,
        "train_max_k": k_max,
        "stages": [_portable(s, run_dir) for s in records],
        "baselines": {n: _portable(b[0], run_dir) for n, b in base.items()},
        "runs": runs,
        "verdict": verdict(runs, k_max),
        "plots": list(PLOTS),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "report.md").write_text(render(summary, plan, str(run_dir)))
    return summary


def _portable(record: dict, run_dir: Path) -> dict:
    """The record with its model path relative to RUN_DIR (the report is committed elsewhere)."""
    model = Path(record["model"])
    try:
        model = model.resolve().relative_to(run_dir.resolve())
    except ValueError:
        pass
    return {**record, "model": str(model)}
