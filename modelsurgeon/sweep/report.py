"""DIR/results.csv (one row per finished run), summary.json, report.md and the plots, from the
run directories of whatever has finished (so `surgeon sweep report DIR` works mid-sweep and
after a cluster ran the emitted commands)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from modelsurgeon.errors import SweepError
from modelsurgeon.sweep import plots
from modelsurgeon.sweep.aggregate import aggregate, run_values
from modelsurgeon.sweep.collect import DONE, is_done, read_run
from modelsurgeon.sweep.expand import SweepManifest
from modelsurgeon.sweep.patch import PatchError, targets
from modelsurgeon.sweep.report_md import render
from modelsurgeon.sweep.tune import choose

PLOTS = ("loss_vs_flops.png", "accuracy_by_length.png", "flops_to_target.png", "answer_loss_by_length.png")
BASE_COLUMNS = (
    "arm",
    "kind",
    "seed",
    "dir",
    "layers",
    "params",
    "flops",
    "tokens",
    "wall_s",
    "final_train_loss",
    "final_eval_loss",
    "flops_to_target",
)


def _tuned_values(run_dir: Path, paths: list[str]) -> dict[str, list]:
    """The values each tuned path took in a run's recipe (one per stage it names)."""
    data = yaml.safe_load((run_dir / "recipe.yaml").read_text()) if (run_dir / "recipe.yaml").is_file() else None
    out = {}
    for path in paths:
        try:
            out[path] = [h.get(k) for h, k in targets(data, path, implicit="grown")] if data else []
        except PatchError:
            out[path] = []
    return out


def tuning_table(out_dir: Path, manifest: SweepManifest) -> dict[str, dict]:
    """Per tuned arm: every grid point (multipliers, values, validation loss) and the choice."""
    table = {}
    for arm in (a for a in manifest.arms if a.tuned):
        points = []
        for job in (j for j in manifest.jobs if j.arm == arm.name and j.phase == "tuning"):
            run_dir = out_dir / job.dir
            loss = (
                json.loads((run_dir / DONE).read_text())["runs"]["progressive"]["final_eval_loss"]
                if is_done(run_dir)
                else None
            )
            points.append(
                {
                    "dir": job.dir,
                    "multipliers": job.multipliers,
                    "values": _tuned_values(run_dir, arm.tuned),
                    "val_loss": float("nan") if is_done(run_dir) and loss is None else loss,
                }
            )
        table[arm.name] = {"paths": arm.tuned, "seed": manifest.tuning.seed, "points": points, "chosen": choose(points)}
    return table


def _rows(manifest: SweepManifest, results, target, wall) -> list[dict]:
    kinds = {a.name: a.kind for a in manifest.arms}
    keys = sorted({k for r in results for k in r.accuracy})
    rows = []
    for r in results:
        v = run_values(r, target, wall)
        row = {
            "arm": r.arm,
            "kind": kinds[r.arm],
            "seed": r.seed,
            "dir": r.dir,
            "layers": r.layers,
            "params": r.params,
            "flops": r.flops,
            "tokens": r.tokens,
            "wall_s": r.wall_s,
            "final_train_loss": r.final_train_loss,
            "final_eval_loss": r.final_eval_loss,
            "flops_to_target": v["flops_to_target"],
            "wall_to_target": v.get("wall_to_target"),
            "loss_at_equal_wall": v.get("loss_at_equal_wall"),
            "loss_jump_at_growth": v.get("loss_jump_at_growth"),
        }
        row.update({f"acc:{k}": r.accuracy.get(k) for k in keys})
        row.update({f"nll:{k}": r.answer_loss.get(k) for k in keys})
        row.update({f"n:{k}": r.n.get(k) for k in keys})
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys([*BASE_COLUMNS, *(k for r in rows for k in r)]))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r[k]) for k in columns} for r in rows)


def write_sweep_report(out_dir: Path, compare_to: str | None = None) -> dict:
    """Aggregate every finished run of DIR; write results.csv, summary.json, report.md, plots.
    `compare_to`: an arm every other arm is compared with, paired by seed (over the sweep's own)."""
    # lazy: import cycle (modelsurgeon.sweep.execute imports modelsurgeon.sweep.report)
    from modelsurgeon.sweep.execute import read_manifest

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    runs = [j for j in manifest.jobs if j.phase == "run"]
    results = [r for j in runs if (r := read_run(out_dir / j.dir, j.arm, j.seed, j.dir)) is not None]
    if compare_to is not None and compare_to not in {a.name for a in manifest.arms}:
        names = ", ".join(a.name for a in manifest.arms)
        raise SweepError(
            str(out_dir),
            [f"--compare-to {compare_to!r} is not an arm of this sweep ({names})"],
            hint="name one of the arms listed",
        )
    stats = aggregate(manifest, results, compare_to)
    rows = _rows(manifest, results, stats["target_loss"], stats["equal_wall_s"])
    summary = {
        "sweep": manifest.name,
        "description": manifest.description,
        "sweep_file": manifest.sweep_file,
        "recipe_file": manifest.recipe_file,
        "seeds": manifest.seeds,
        "finished": len(results),
        "expected": len(runs),
        "missing": [j.dir for j in runs if not is_done(out_dir / j.dir)],
        "arms": [a.model_dump(exclude={"template"}) for a in manifest.arms],
        "tuning": tuning_table(out_dir, manifest),
        **stats,
        "runs": rows,
        "plots": list(PLOTS),
    }
    _write_csv(out_dir / "results.csv", rows)
    plots.loss_vs_flops(manifest, results, stats["target_loss"], out_dir / PLOTS[0])
    plots.accuracy_by_length(stats["arms_stats"], out_dir / PLOTS[1])
    plots.flops_to_target(stats["arms_stats"], out_dir / PLOTS[2])
    plots.answer_loss_by_length(stats["arms_stats"], out_dir / PLOTS[3])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out_dir / "report.md").write_text(render(summary, str(out_dir)))
    return summary
