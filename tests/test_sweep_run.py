"""`surgeon sweep` end to end on a micro sweep (a tuned from-scratch baseline and a grown arm,
two seeds): results.csv against the statistics, seeds that differ, the tuning choice, verdict
words; slow: `--emit-commands` + `sweep report` equal to the in-process sweep (so the same seed
gives the same numbers), and a killed sweep finished by --resume equal to an uninterrupted one."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.sweep import run_sweep
from modelsurgeon.sweep.stats import t_interval

RECIPE = """name: micro
init: {family: llama, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
       num_key_value_heads: 2, max_position_embeddings: 64}
data: ["synthetic:arith:n=300,max_k=2"]
eval: {arith: {max_k: 3, per_k: 4}}
defaults: {seq_len: 32, batch_size: 2, log_every: 1, eval_every: 2, save_every: 0, lr: 0.003}
stages:
  - train: {method: full, steps: 4}
  - grow: {steps: [{op: interpolate, factor: 2, branch_scale: split}]}
  - train: {method: full, steps: 3, lr_policy: rewarm, rewarm_steps: 1}
baselines:
  - {name: scratch-4, init: {num_hidden_layers: 4}, match: flops}
"""
SWEEP = """name: micro
recipe: {recipe}
seeds: [0, 1]
axes: {{operator: {{split: {{}}}}}}
baselines: tuned
tuning: {{points: 2}}
"""
VOLATILE = ("wall_s", "dir", "wall_to_target", "loss_at_equal_wall")  # wall time varies; dirs differ


def write_micro(base: Path) -> Path:
    (base / "recipe.yaml").write_text(RECIPE)
    path = base / "micro.yaml"
    path.write_text(SWEEP.format(recipe=base / "recipe.yaml"))
    return path


def rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def stable(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows(out)]


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("sweep")
    sweep = write_micro(base)
    summary = run_sweep(sweep, base / "out")
    return sweep, base / "out", summary


def test_one_row_per_run_and_the_statistics_come_from_them(micro):
    _, out, summary = micro
    table = rows(out)
    assert [(r["arm"], r["seed"]) for r in table] == [
        ("operator=split", "0"),
        ("operator=split", "1"),
        ("scratch-4", "0"),
        ("scratch-4", "1"),
    ]
    assert summary["finished"] == summary["expected"] == 4 and not summary["missing"]
    for arm in ("operator=split", "scratch-4"):
        losses = [float(r["final_eval_loss"]) for r in table if r["arm"] == arm]
        got, want = summary["arms_stats"][arm]["t"]["final_eval_loss"], t_interval(losses)
        assert (got["estimate"], got["low"], got["high"]) == pytest.approx((want.estimate, want.low, want.high))
        run = json.loads((out / f"runs/{arm}/seed-0/summary.json").read_text())["runs"]["progressive"]
        first = next(r for r in table if r["arm"] == arm and r["seed"] == "0")
        assert float(first["final_eval_loss"]) == run["final_eval_loss"] and int(first["flops"]) == run["flops"]
    assert {"acc:arith:interpolation", "acc:arith:extrapolation", "flops_to_target"} <= set(table[0])
    for arm in ("operator=split", "scratch-4"):  # answer loss: per run the mean of its problems' losses
        first = next(r for r in table if r["arm"] == arm and r["seed"] == "0")
        problems = [
            json.loads(x)
            for x in (out / f"runs/{arm}/seed-0").rglob("eval_problems.jsonl").__next__().read_text().splitlines()
        ]
        extra = [p["answer_nll"] for p in problems if p["set"] == "extrapolation"]
        assert float(first["nll:arith:extrapolation"]) == pytest.approx(sum(extra) / len(extra))
        assert "arith:extrapolation" in summary["arms_stats"][arm]["answer_loss_by_length"]
    assert "answer loss arith:extrapolation" in (out / "report.md").read_text()
    grown = next(r for r in table if r["arm"] == "operator=split" and r["seed"] == "0")
    stages = json.loads((out / "runs/operator=split/seed-0/summary.json").read_text())["stages"]
    jump = stages[2]["initial_eval_loss"] - stages[0]["final_eval_loss"]  # train, grow, train
    assert float(grown["loss_jump_at_growth"]) == pytest.approx(jump)
    assert next(r for r in table if r["arm"] == "scratch-4")["loss_jump_at_growth"] == ""  # never grew
    # the common wall time is the earliest end of a run: that run's loss there is its last evaluation
    # (a micro run may end before another's first evaluation: that one has no loss at that time)
    wall = summary["equal_wall_s"]
    shortest = min(table, key=lambda r: _last_eval_wall(out, r))
    assert wall == pytest.approx(_last_eval_wall(out, shortest))
    assert float(shortest["loss_at_equal_wall"]) == pytest.approx(_last_eval_loss(out, shortest))


def _evals(out: Path, row: dict) -> list[tuple[float, float]]:
    """(cumulative wall s, eval loss) of a run, from its stage records and metrics files."""
    summary = json.loads((out / row["dir"] / "summary.json").read_text())
    points, offset = [], 0.0
    for s in summary["stages"]:
        if s["kind"] == "train":
            for line in (out / row["dir"] / s["model"] / "metrics.jsonl").read_text().splitlines():
                m = json.loads(line)
                if "eval_loss" in m:
                    points.append((offset + m["elapsed_s"], m["eval_loss"]))
        offset += s["wall_s"]
    return points


def _last_eval_wall(out: Path, row: dict) -> float:
    return _evals(out, row)[-1][0]


def _last_eval_loss(out: Path, row: dict) -> float:
    return _evals(out, row)[-1][1]


def test_different_seeds_differ(micro):
    _, out, _ = micro
    for arm in ("operator=split", "scratch-4"):
        a, b = (next(r for r in rows(out) if r["arm"] == arm and r["seed"] == s) for s in ("0", "1"))
        assert a["final_eval_loss"] != b["final_eval_loss"] and a["final_train_loss"] != b["final_train_loss"]
        recipes = [yaml.safe_load((out / f"runs/{arm}/seed-{s}/recipe.yaml").read_text()) for s in (0, 1)]
        assert recipes[0]["init"]["seed"] != recipes[1]["init"]["seed"] and recipes[0]["eval"] == recipes[1]["eval"]


def test_tuned_baseline_runs_with_the_grid_point_of_lowest_validation_loss(micro):
    _, out, summary = micro
    t = summary["tuning"]["scratch-4"]
    losses = {p["dir"]: p["val_loss"] for p in t["points"]}
    assert len(losses) == 2 and t["chosen"]["dir"] == min(losses, key=losses.get)
    chosen_lr = yaml.safe_load((out / t["chosen"]["dir"] / "recipe.yaml").read_text())["stages"][0]["train"]["lr"]
    for seed in (0, 1):
        recipe = yaml.safe_load((out / f"runs/scratch-4/seed-{seed}/recipe.yaml").read_text())
        assert recipe["stages"][0]["train"]["lr"] == chosen_lr
    report = (out / "report.md").read_text()
    assert "| scratch-4 | baseline | - | operator=split | yes: stages.train.0.lr |" in report
    assert "| operator=split | grown | operator=split | scratch-4 | no (the recipe's values) |" in report


def test_not_resolved_exactly_when_the_interval_holds_zero(micro):
    _, out, summary = micro
    c = summary["comparisons"]["operator=split vs scratch-4"]
    assert c["seeds"] == [0, 1]
    for d in list(c["t"].values()) + list(c["bootstrap"].values()):
        holds_zero = d["low"] is None or d["low"] <= 0 <= d["high"]
        assert (d["verdict"] == "not resolved") == holds_zero
    assert c["t"]["tokens"]["verdict"] == "higher"  # the grown arm reads more tokens at equal FLOPs, every seed
    assert "not resolved" in (out / "report.md").read_text()
    for name in summary["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run_commands(commands: list[str]) -> None:
    runner = CliRunner()
    for line in commands:
        argv = shlex.split(line)
        assert argv[:2] == ["surgeon", "progressive"], line
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_emitted_commands_and_sweep_report_equal_the_in_process_sweep(micro, tmp_path):
    sweep, reference, _ = micro
    out = tmp_path / "cluster"
    runner = CliRunner()
    for _phase in ("tuning", "runs"):
        result = runner.invoke(app, ["sweep", str(sweep), "-o", str(out), "--emit-commands"])
        assert result.exit_code == 0, result.output
        _run_commands([line for line in result.stdout.splitlines() if line.startswith("surgeon ")])
    result = runner.invoke(app, ["sweep", "report", str(out)])
    assert result.exit_code == 0, result.output
    assert stable(out) == stable(reference)  # same recipes, same seeds -> the same numbers in other directories


@pytest.mark.slow
def test_killed_sweep_finishes_with_resume_as_if_never_killed(micro, tmp_path):
    sweep, reference, _ = micro
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelsurgeon", "sweep", str(sweep), "-o", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    # kill once the grid is done and a reported run is mid-way: its first stage finished, the run not
    while time.time() < deadline and not list(out.glob("runs/*/seed-*/stages/01-train/stage.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    unfinished = [d for d in out.glob("runs/*/seed-*") if not (d / "summary.json").is_file()]
    assert unfinished, "the sweep finished before it was killed; the test needs an interrupted run"
    with pytest.raises(Exception, match="--resume"):
        run_sweep(sweep, out)
    run_sweep(sweep, out, resume=True)
    assert stable(out) == stable(reference)


@pytest.mark.slow
def test_shipped_smoke_sweep(tmp_path):
    """plans/sweeps/smoke.yaml as shipped (2 workers on 2 shared cores: 36 s at load 5, 3 min 6 s at load 5-12)."""
    out = tmp_path / "smoke"
    summary = run_sweep(Path("plans/sweeps/smoke.yaml"), out, workers=2, threads=1)
    assert summary["finished"] == summary["expected"] == 6
    assert set(summary["comparisons"]) == {"operator=split vs scratch-12", "operator=zero vs scratch-12"}
    assert summary["tuning"]["scratch-12"]["chosen"] is not None
    assert len(rows(out)) == 6 and (out / "report.md").is_file()


def test_report_compares_every_arm_with_a_reference_arm(micro, tmp_path):
    """`sweep report DIR --compare-to ARM`: each other arm gets a paired comparison with ARM,
    its numbers the same paired t intervals as against a baseline; an unknown arm is refused."""
    import shutil

    from modelsurgeon.errors import SweepError
    from modelsurgeon.sweep.report import write_sweep_report
    from modelsurgeon.sweep.stats import paired_difference

    _, out, _ = micro
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    summary = write_sweep_report(copy, compare_to="operator=split")
    c = summary["comparisons"]["scratch-4 vs operator=split"]
    assert summary["compared_to"] == "operator=split" and c["baseline"] == "operator=split"
    loss = {
        a: {int(r["seed"]): float(r["final_eval_loss"]) for r in rows(copy) if r["arm"] == a}
        for a in ("scratch-4", "operator=split")
    }
    want = paired_difference(loss["scratch-4"], loss["operator=split"])
    assert c["t"]["final_eval_loss"]["estimate"] == pytest.approx(want.estimate)
    with pytest.raises(SweepError, match="not an arm of this sweep"):
        write_sweep_report(copy, compare_to="arm=nope")
