"""`surgeon sweep` without training: expansion (axes x seeds, patches, stage wildcards), problems
refused all at once with their YAML lines, the seed rewrite, tuning grids chosen on validation
loss (not the test set), --emit-commands phases, and the sweep directory's guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from modelsurgeon.errors import OutputError, SweepError
from modelsurgeon.sweep.execute import emit_commands, job_recipe, read_manifest, tuning_choices
from modelsurgeon.sweep.expand import expand
from modelsurgeon.sweep.patch import SEED_STRIDE, apply_patch, seeded, seeded_spec
from modelsurgeon.sweep.schema import parse_sweep

RECIPE = """name: micro
init: {family: llama, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
       num_key_value_heads: 2, max_position_embeddings: 64, seed: 3}
data: ["synthetic:arith:n=300,max_k=2"]
eval: {arith: {max_k: 3, per_k: 4, seed: 5}}
defaults: {seq_len: 32, batch_size: 2, log_every: 1, eval_every: 2, save_every: 0, lr: 0.003}
stages:
  - train: {method: full, steps: 4, data: ["synthetic:arith:n=300,max_k=2,seed=1*2"]}
  - grow: {steps: [{op: interpolate, factor: 2, branch_scale: split}]}
  - train: {method: full, steps: 3, lr_policy: rewarm, rewarm_steps: 1, seed: 7}
baselines:
  - {name: scratch-4, init: {num_hidden_layers: 4}, match: flops}
"""

SWEEP = """name: t
recipe: {recipe}
seeds: [0, 1]
axes:
  operator:
    split: {{}}
    zero: {{stages.grow.*.steps: [{{op: interpolate, factor: 2, new: zero}}]}}
  lr:
    base: {{}}
    high: {{stages.train.grown.lr: 0.01}}
"""


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def _sweep(tmp_path: Path, recipe: Path, text: str = SWEEP, **extra) -> Path:
    """The sweep file, written as given (so YAML lines are the test's), `extra` keys appended."""
    path = tmp_path / "sweep.yaml"
    path.write_text(text.format(recipe=recipe) + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    return path


def _expand(path: Path):
    return expand(parse_sweep(path.read_text(), str(path)))


def test_axes_times_seeds_with_patches_applied(tmp_path, recipe):
    m = _expand(_sweep(tmp_path, recipe))
    grown = [a for a in m.arms if a.kind == "grown"]
    assert [a.name for a in grown] == [
        "operator=split,lr=base",
        "operator=split,lr=high",
        "operator=zero,lr=base",
        "operator=zero,lr=high",
    ]
    zero = m.arm("operator=zero,lr=high").template
    assert zero["stages"][1]["grow"]["steps"] == [{"op": "interpolate", "factor": 2, "new": "zero"}]
    assert "lr" not in zero["stages"][0]["train"] and zero["stages"][2]["train"]["lr"] == 0.01  # post-growth only
    assert "baselines" not in zero  # baselines are arms of their own
    # one baseline arm: every grown arm has the same budget, so they share it
    assert [(a.name, a.pairs) for a in m.arms if a.kind == "baseline"] == [("scratch-4", [a.name for a in grown])]
    runs = [(j.arm, j.seed) for j in m.jobs if j.phase == "run"]
    assert len(runs) == 5 * 2 and ("scratch-4", 1) in runs and not [j for j in m.jobs if j.phase == "tuning"]


def test_baseline_recipe_is_what_progressive_trains_inline(tmp_path, recipe):
    from modelsurgeon.progressive.planning import plan_recipe
    from modelsurgeon.progressive.recipe import load_recipe

    inline = plan_recipe(load_recipe(recipe)).baselines[0]
    b = _expand(_sweep(tmp_path, recipe)).arm("scratch-4").template
    assert b["init"]["num_hidden_layers"] == 4 and b["init"]["hidden_size"] == 16
    assert b["stages"] == [{"train": {"method": "full", "steps": inline.options.steps}}]
    assert (b["data"], b["defaults"], b["eval"]) == (
        yaml.safe_load(RECIPE)["data"],
        yaml.safe_load(RECIPE)["defaults"],
        yaml.safe_load(RECIPE)["eval"],
    )


def test_bad_patches_and_bad_recipes_are_refused_together_with_lines(tmp_path, recipe):
    text = """name: t
recipe: {recipe}
seeds: [0]
axes:
  operator:
    nowhere: {{stages.grow.3.steps: []}}
    scalar: {{defaults.lr.value: 1}}
    typo: {{stages.train.*.lrr: 0.1}}
"""
    path = _sweep(tmp_path, recipe, text)
    with pytest.raises(SweepError) as info:
        _expand(path)
    problems = info.value.problems
    assert any("axes.operator.nowhere.stages.grow.3.steps (line 6)" in p and "1 grow stage" in p for p in problems)
    assert any("axes.operator.scalar.defaults.lr.value (line 7)" in p for p in problems)
    assert any("arm operator=typo, seed 0" in p and "lrr" in p for p in problems)  # the recipe check, per arm
    assert len(problems) >= 3 and not (tmp_path / "out").exists()


def test_schema_problems_carry_lines(tmp_path, recipe):
    path = _sweep(tmp_path, recipe, "name: t\nrecipe: {recipe}\nseeds: [0, 0]\nbaselines: sometimes\n")
    with pytest.raises(SweepError) as info:
        _expand(path)
    text = "\n".join(info.value.problems)
    assert "seeds (line 3)" in text and "baselines (line 4)" in text


def test_seed_rewrite_moves_every_training_seed_and_keeps_the_test_set():
    data = yaml.safe_load(RECIPE)
    s1 = seeded(data, 1)
    assert s1["init"]["seed"] == 3 + SEED_STRIDE and s1["defaults"]["seed"] == SEED_STRIDE
    assert s1["stages"][2]["train"]["seed"] == 7 + SEED_STRIDE
    assert s1["data"] == [f"synthetic:arith:n=300,max_k=2,seed={SEED_STRIDE}"]
    assert s1["stages"][0]["train"]["data"] == [f"synthetic:arith:n=300,max_k=2,seed={1 + SEED_STRIDE}*2"]
    assert s1["eval"] == data["eval"]  # same test problems for every seed
    s0 = seeded(data, 0)
    assert (s0["init"]["seed"], s0["stages"][2]["train"]["seed"], s0["defaults"]["seed"]) == (3, 7, 0)
    assert seeded_spec("synthetic:arith", 2) == "synthetic:arith:seed=2000"
    assert seeded_spec("math.jsonl*0.5", 2) == "math.jsonl*0.5"  # files have no seed; order comes from train seed
    from modelsurgeon.data.spec import parse_data_spec

    for spec, want in (
        ("dm-math:arithmetic__add_sub_multiple", "dm-math:arithmetic__add_sub_multiple:seed=2000"),
        (
            "dm-math:arithmetic__mixed:train-easy:n=200,seed=3*0.5",
            "dm-math:arithmetic__mixed:train-easy:n=200,seed=2003*0.5",
        ),
    ):
        assert seeded_spec(spec, 2) == want and parse_data_spec(want)  # the data library reads what we write


def test_recipe_seeds_above_the_stride_are_refused(tmp_path, recipe):
    recipe.write_text(RECIPE.replace("seed: 7", "seed: 1234"))
    with pytest.raises(SweepError, match="stages\\[2\\].train.seed = 1234"):
        _expand(_sweep(tmp_path, recipe))


def test_stage_selectors():
    data = yaml.safe_load(RECIPE)
    assert apply_patch(data, {"stages.train.0.steps": 9, "stages.train.grown.warmup": 2}) == []
    assert data["stages"][0]["train"]["steps"] == 9 and "warmup" not in data["stages"][0]["train"]
    assert data["stages"][2]["train"]["warmup"] == 2
    assert "no grow stage" in apply_patch(data, {"stages.grow.grown.steps": []})[0]


def _finish(run_dir: Path, val_loss: float, test_correct: int) -> None:
    """A fake finished run: summary.json (validation loss) and a perfect or failed test set."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stage = {"kind": "train", "model": "stages/01-train/model", "flops": 1, "cum_flops": 1, "flops_per_token": 1}
    run = {
        "flops": 1,
        "tokens": 1,
        "wall_s": 1.0,
        "layers": 4,
        "params": 1,
        "final_train_loss": val_loss,
        "final_eval_loss": val_loss,
    }
    (run_dir / "summary.json").write_text(json.dumps({"runs": {"progressive": run}, "stages": [stage]}))
    sdir = run_dir / "stages" / "01-train"
    sdir.mkdir(parents=True, exist_ok=True)
    (sdir / "eval_problems.jsonl").write_text(
        json.dumps({"bench": "arith", "set": "interpolation", "id": "q", "length": 1, "correct": test_correct}) + "\n"
    )


def test_tuned_baseline_takes_the_lowest_validation_loss_not_the_best_test_score(tmp_path, recipe):
    sweep = _sweep(tmp_path, recipe, SWEEP.split("axes:")[0], baselines="tuned")
    out = tmp_path / "out"
    commands, note = emit_commands(sweep, out)
    assert len(commands) == 3 and "tuning phase" in note  # the grid first
    assert all(c.startswith("surgeon progressive ") and c.endswith(" --resume") for c in commands)
    m = read_manifest(out)
    grid = {j.multipliers[0]: out / j.dir for j in m.jobs if j.phase == "tuning"}
    assert sorted(grid) == pytest.approx([1 / 3, 1, 3])
    lrs = {k: yaml.safe_load((d / "recipe.yaml").read_text())["stages"][0]["train"]["lr"] for k, d in grid.items()}
    assert lrs == {k: pytest.approx(0.003 * k) for k in grid}  # centred on the recipe's lr, a factor 3 apart
    by_value = sorted(grid)
    _finish(grid[by_value[0]], val_loss=2.0, test_correct=1)  # best on the test set, worst on validation
    _finish(grid[by_value[1]], val_loss=1.6, test_correct=0)
    _finish(grid[by_value[2]], val_loss=1.2, test_correct=0)  # best on validation
    assert tuning_choices(out, m)["scratch-4"] == pytest.approx([3.0])
    commands, note = emit_commands(sweep, out)
    assert len(commands) == 2 + 2  # the grown arm and the baseline at two seeds
    for job in (j for j in m.jobs if j.phase == "run" and j.arm == "scratch-4"):
        written = yaml.safe_load((out / job.dir / "recipe.yaml").read_text())
        assert written == job_recipe(m, job, {"scratch-4": [3.0]})
        assert written["stages"][0]["train"]["lr"] == pytest.approx(0.009)
        assert f"{(out / job.dir).resolve()}" in "\n".join(commands)


def test_sweep_dir_guard(tmp_path, recipe):
    sweep = _sweep(tmp_path, recipe)
    out = tmp_path / "out"
    emit_commands(sweep, out)
    from modelsurgeon.sweep import run_sweep

    with pytest.raises(OutputError, match="--resume"):
        run_sweep(sweep, out)
    recipe.write_text(RECIPE.replace("steps: 3", "steps: 4"))
    with pytest.raises(SweepError, match="differs"):
        emit_commands(sweep, out)


@pytest.mark.parametrize("path", sorted(Path("plans/sweeps").glob("*.yaml")), ids=str)
def test_shipped_sweeps_expand(path):
    """Every shipped sweep and each of its expanded recipes passes the checks run before training."""
    m = _expand(path)
    assert m.jobs and all(a.pairs for a in m.arms)


def test_grid_centres_on_the_method_default_when_the_recipe_sets_no_lr(tmp_path, recipe):
    from modelsurgeon.train.methods import METHODS

    recipe.write_text(RECIPE.replace(", lr: 0.003}", "}"))
    m = _expand(_sweep(tmp_path, recipe, SWEEP.split("axes:")[0], baselines="tuned"))
    job = next(j for j in m.jobs if j.phase == "tuning" and j.multipliers == [3.0])
    assert job_recipe(m, job, {})["stages"][0]["train"]["lr"] == pytest.approx(3 * METHODS["full"].default_lr)


def test_compare_to_names_an_arm_and_is_not_part_of_what_resume_checks(tmp_path, recipe):
    from modelsurgeon.sweep.execute import _same

    with pytest.raises(SweepError, match="compare_to 'arm=nope' is not an arm of this sweep"):
        _expand(_sweep(tmp_path, recipe, compare_to="arm=nope"))
    named = _expand(_sweep(tmp_path, recipe, compare_to="operator=split,lr=base"))
    assert named.compare_to == "operator=split,lr=base" and _same(named, _expand(_sweep(tmp_path, recipe)))
