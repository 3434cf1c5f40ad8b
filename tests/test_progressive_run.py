"""`surgeon progressive` end to end on a minimal recipe: the report's numbers against the files
each stage wrote, stages in order, FLOPs adding up, plots written, a trigger stopping a stage,
and --resume skipping finished stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import OutputError
from modelsurgeon.progressive import run_recipe
from modelsurgeon.train.callbacks import read_metrics

RECIPE = """name: mini
init: {family: llama, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
       num_key_value_heads: 2, max_position_embeddings: 64}
data: ["synthetic:arith:n=300,max_k=2"]
eval: {arith: {max_k: 3, per_k: 4}}
defaults: {seq_len: 32, batch_size: 2, log_every: 1, save_every: 0, lr: 0.003}
stages:
  - train: {method: full, steps: 5, trigger: [{steps: 3}]}
  - grow: {steps: [{op: interpolate, factor: 2, branch_scale: split}]}
  - train: {method: lora, steps: 3, lora_r: 2, lr_policy: rewarm, rewarm_steps: 1}
baselines:
  - {name: scratch-4, init: {num_hidden_layers: 4}, match: flops}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("progressive")
    recipe = base / "mini.yaml"
    recipe.write_text(RECIPE)
    result = CliRunner().invoke(app, ["progressive", str(recipe), "-o", str(base / "run")])
    assert result.exit_code == 0, result.output
    return base / "run", json.loads((base / "run" / "summary.json").read_text())


def _lineage(run_dir: Path, record: dict) -> dict:
    return json.loads((run_dir / record["model"] / "surgeon.json").read_text())["lineage"][-1]


def test_stages_in_order_with_the_layers_they_had(run):
    _, s = run
    assert [(x["stage"], x["kind"], x["layers"]) for x in s["stages"]] == [
        ("01-train", "train", 2),
        ("02-grow", "grow", 4),
        ("03-train", "train", 4),
    ]


def test_stage_numbers_come_from_the_metrics_files(run):
    run_dir, s = run
    for record in [x for x in s["stages"] if x["kind"] == "train"] + list(s["baselines"].values()):
        rows = read_metrics(run_dir / record["model"] / "metrics.jsonl")
        lineage = _lineage(run_dir, record)
        assert record["steps"] == lineage["steps"] == max(r["step"] for r in rows)
        assert record["tokens"] == record["steps"] * 2 * 32
        assert record["flops"] == record["tokens"] * record["flops_per_token"]
        evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        assert record["final_eval_loss"] == evals[-1][1] and record["initial_eval_loss"] == evals[0][1]
        assert evals[0][0] == 0 and evals[-1][0] == record["steps"]
        assert record["trainable"] == lineage["trainable_params"]


def test_trigger_stopped_the_first_stage(run):
    _, s = run
    first = s["stages"][0]
    assert (first["steps"], first["planned_steps"], first["stop_reason"]) == (3, 5, "steps")
    assert s["stages"][2]["stop_reason"] == "cap"


def test_flops_add_up_and_the_baseline_matches(run):
    _, s = run
    flops = [x["flops"] for x in s["stages"]]
    assert [x["cum_flops"] for x in s["stages"]] == [sum(flops[: i + 1]) for i in range(len(flops))]
    assert s["runs"]["progressive"]["flops"] == sum(flops)
    assert s["stages"][1]["flops"] == 0  # growth is a copy, not training
    b = s["baselines"]["scratch-4"]
    per_step = b["flops"] // b["steps"]
    assert abs(b["flops"] - sum(flops)) <= per_step / 2  # nearest whole step of the actual total


def test_report_shows_the_summary_numbers_and_plots(run):
    run_dir, s = run
    report = (run_dir / "report.md").read_text()
    for x in s["stages"]:
        assert f"| {x['stage']} |" in report and f"{x['cum_flops']:.3e}" in report
    for line in s["verdict"]:
        assert line in report
    acc = s["runs"]["progressive"]["accuracy_by_k"]
    assert sorted(acc, key=int) == ["1", "2", "3"] and all(v["n"] == 4 for v in acc.values())
    for name in s["plots"]:
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grad_norms_have_one_entry_per_layer(run):
    run_dir, s = run
    for record in s["stages"]:
        if record["kind"] == "train":
            rows = [
                json.loads(x)
                for x in (run_dir / record["model"]).parent.joinpath("grad_norms.jsonl").read_text().splitlines()
            ]
            assert rows and all(len(r["norms"]) == record["layers"] and min(r["norms"]) > 0 for r in rows)


def test_resume_skips_finished_stages(run, tmp_path):
    run_dir, s = run
    marks = {p: p.stat().st_mtime_ns for p in run_dir.glob("stages/*/stage.json")}
    again = run_recipe(run_dir / "recipe.yaml", run_dir, resume=True)
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("stages/*/stage.json")} == marks
    assert again["runs"] == s["runs"]


def test_existing_run_dir_needs_resume(run):
    run_dir, _ = run
    with pytest.raises(OutputError, match="--resume"):
        run_recipe(run_dir / "recipe.yaml", run_dir)


def test_resume_accepts_comments_but_not_a_changed_recipe(run, tmp_path):
    run_dir, _ = run
    commented = tmp_path / "commented.yaml"
    commented.write_text("# same recipe, new comment\n" + RECIPE)
    run_recipe(commented, run_dir, resume=True)
    changed = tmp_path / "changed.yaml"
    changed.write_text(RECIPE.replace("lora_r: 2", "lora_r: 4"))
    with pytest.raises(OutputError, match="not started by this recipe"):
        run_recipe(changed, run_dir, resume=True)


@pytest.mark.slow
def test_sigterm_saves_the_stage_and_resume_finishes(tmp_path, monkeypatch):
    """Preemption (SIGTERM) mid-stage: exit 143 with a resumable checkpoint; --resume completes the run."""
    import os
    import signal

    from modelsurgeon.train import callbacks

    on_log = callbacks.MetricsCallback.on_log

    def on_log_then_sigterm(self, args, state, control, logs=None, **kw):
        on_log(self, args, state, control, logs=logs, **kw)
        if state.global_step == 1 and logs and "loss" in logs:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(callbacks.MetricsCallback, "on_log", on_log_then_sigterm)
    recipe, run_dir = tmp_path / "mini.yaml", tmp_path / "run"
    recipe.write_text(RECIPE)
    result = CliRunner().invoke(app, ["progressive", str(recipe), "-o", str(run_dir)])
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "interrupted by SIGTERM at step 2" in " ".join(result.output.split())
    assert (run_dir / "stages" / "01-train" / ".model.work" / "checkpoint-2").is_dir()
    monkeypatch.setattr(callbacks.MetricsCallback, "on_log", on_log)
    result = CliRunner().invoke(app, ["progressive", str(recipe), "-o", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "summary.json").read_text())["stages"][0]["steps"] == 3
