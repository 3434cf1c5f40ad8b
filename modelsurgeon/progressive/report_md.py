"""report.md from summary.json's data: stage table, per-run results, accuracy by chain length,
the verdict at equal FLOPs, the plots, and how the numbers were counted."""

from __future__ import annotations

from modelsurgeon.progressive.planning import RecipePlan


def _f(x, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _acc(record: dict, keep) -> str:
    acc = record.get("accuracy_by_k") or {}
    chosen = [v for k, v in acc.items() if keep(int(k))]
    n = sum(v["n"] for v in chosen)
    return f"{sum(v['accuracy'] * v['n'] for v in chosen) / n:.3f}" if n else "-"


def _stage_rows(stages: list[dict], k_max: int | None) -> list[str]:
    out = [
        "| stage | kind | layers | params | trainable | steps | tokens | FLOPs | cumulative FLOPs | wall (s) | stop "
        f"| eval loss at start | final train loss | final eval loss | acc. k <= {k_max} | acc. k > {k_max} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        kind = s["kind"] + (
            f" ({s['method']})" if s["kind"] == "train" else f" (+{s['new_layers']} layers, {s['equivalence']})"
        )
        out.append(
            f"| {s['stage']} | {kind} | {s['layers']} | {s['params']:,} | {s['trainable']:,} | {s['steps']:,} | "
            f"{s['tokens']:,} | {s['flops']:.3e} | {s['cum_flops']:.3e} | {s['wall_s']:.1f} | "
            f"{s.get('stop_reason', '-')} | "
            f"{_f(s.get('initial_eval_loss'))} | {_f(s.get('final_train_loss'))} | {_f(s.get('final_eval_loss'))} | "
            f"{_acc(s, lambda k: k_max is None or k <= k_max)} | {_acc(s, lambda k: k_max is not None and k > k_max)} |"
        )
    return out


def _run_rows(runs: dict[str, dict]) -> list[str]:
    out = [
        "| run | layers | params | tokens | training FLOPs | wall (s) | final train loss | final eval loss | acc. "
        "trained k | acc. longer k |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        short = _f(r["accuracy_trained_k"]["accuracy"], ".3f") if r["accuracy_trained_k"] else "-"
        long = _f(r["accuracy_longer_k"]["accuracy"], ".3f") if r["accuracy_longer_k"] else "-"
        out.append(
            f"| {name} | {r['layers']} | {r['params']:,} | {r['tokens']:,} | {r['flops']:.3e} | {r['wall_s']:.1f} | "
            f"{_f(r['final_train_loss'])} | {_f(r['final_eval_loss'])} | {short} | {long} |"
        )
    return out


def _acc_rows(runs: dict[str, dict], k_max: int | None) -> list[str]:
    ks = sorted({int(k) for r in runs.values() if r["accuracy_by_k"] for k in r["accuracy_by_k"]})
    if not ks:
        return ["(no arith eval in this recipe)"]
    head = " | ".join(f"k={k}{'*' if k_max is not None and k > k_max else ''}" for k in ks)
    out = [f"| run | {head} |", "|---|" + "---|" * len(ks)]
    for name, r in runs.items():
        acc = r["accuracy_by_k"] or {}
        out.append(
            f"| {name} | " + " | ".join(_f(acc[str(k)]["accuracy"], ".2f") if str(k) in acc else "-" for k in ks) + " |"
        )
    n = next((r["accuracy_by_k"][str(ks[0])]["n"] for r in runs.values() if r["accuracy_by_k"]), 0)
    out.append(
        f"\n{n} held-out problems per k (never in training data); * = longer than any training chain (k > {k_max})."
    )
    return out


def _test_rows(runs: dict[str, dict]) -> list[str]:
    """Per test set (and per module where the benchmark has modules): accuracy and n, per run."""
    keys = list(
        dict.fromkeys((b, t) for r in runs.values() for b, sets in (r.get("tests") or {}).items() for t in sets)
    )
    if not keys:
        return ["(no test sets in this recipe)"]
    out = ["| run | benchmark | test set | module | accuracy | n |", "|---|---|---|---|---|---|"]
    for name, r in runs.items():
        for bench, test in keys:
            s = (r.get("tests") or {}).get(bench, {}).get(test)
            if s is None:
                continue
            out.append(f"| {name} | {bench} | {test} | all | {s['accuracy']:.3f} | {s['n']} |")
            out += [
                f"| {name} | {bench} | {test} | {m} | {v['accuracy']:.3f} | {v['n']} |"
                for m, v in s.get("by_module", {}).items()
            ]
    return out


NOTES = """## How the numbers are counted

- **FLOPs** per training token: 6N for full training; 4N_total + 2N_trainable for LoRA (the frozen
  base still runs forward and backward to activations, but computes no weight gradients; the
  adapters are counted in N_total and N_trainable); plus 12 * layers * seq_len * d_attn for the
  attention score and value matmuls (forward + backward). N counts matmul weights only: decoder
  linears and the output head; the input embedding is a lookup and is excluded (with tied
  embeddings the matrix is counted once, as the head). Growth itself is a copy and costs no
  training FLOPs. Evaluation is not counted.
- **Baselines** are matched to the progressive run's *actual* total (equal to the planned one
  unless a trigger ended a stage early), to the nearest whole step.
- **Eval loss** is train-stage's held-out share of each stage's own data draw (same generator,
  so comparable in distribution, not the identical problems); **accuracy** is greedy exact match
  on the same held-out `synthetic:arith` eval problems for every model.
- One seed per run: differences within the stated standard errors are noise.
- Wall times are measured on the machine as it was (possibly shared and busy); they vary with
  its load and are not part of the verdict, which compares runs at equal FLOPs.
"""


def render(summary: dict, plan: RecipePlan, run_dir: str) -> str:
    r = plan.loaded.recipe
    runs, k_max = summary["runs"], summary["train_max_k"]
    lines = [
        f"# Progressive growth report: {r.name}",
        "",
        r.description.strip(),
        "",
        f"Produced by: `surgeon progressive {summary['recipe_file']} -o {run_dir}`",
        "",
        "## Verdict at equal compute",
        "",
        *[f"- {v}" for v in summary["verdict"]],
        "",
        "## Stages of the progressive run",
        "",
        *_stage_rows(summary["stages"], k_max),
        "",
        "## Final results per run",
        "",
        *_run_rows(runs),
        "",
        "## Exact-match accuracy by chain length",
        "",
        *_acc_rows(runs, k_max),
        "",
        "## Exact match per test set",
        "",
        *_test_rows(runs),
        "",
        "## Plots",
        "",
        "![loss vs FLOPs](loss_vs_flops.png)",
        "",
        "![accuracy by k](accuracy_by_k.png)",
        "",
        "![parameters](params_over_time.png)",
        "",
        "![gradient norms](grad_norms.png)",
        "",
        NOTES,
    ]
    return "\n".join(lines)
