"""`train: {flops: X}`: a stage's budget in training FLOPs (steps = round(X / FLOPs per step)), so
arms with different models, methods or growth points spend the same compute."""

from __future__ import annotations

import pytest

from modelsurgeon.errors import RecipeError
from modelsurgeon.progressive.flops import stage_flops
from modelsurgeon.progressive.planning import plan_recipe
from modelsurgeon.progressive.recipe import parse_recipe
from tests.test_progressive import recipe_text


def _plan(stages: str, baselines: str = ""):
    return plan_recipe(parse_recipe(recipe_text(stages, baselines)))


def test_flops_budget_sets_the_nearest_step_count():
    plan = _plan(
        "  - train: {method: full, steps: 1}\n  - grow: {steps: [{op: interpolate, factor: 2}]}\n"
        "  - train: {method: lora, flops: 5.0e8}"
    )
    stage = plan.stages[-1]
    per_step = stage_flops(stage.counts, 2 * 32, 32, "lora", lora_r=stage.options.lora_r).total
    assert stage.steps == round(5.0e8 / per_step) == stage.options.steps
    assert stage.steps > 1 and abs(stage.flops.total - 5.0e8) <= per_step / 2


def test_equal_flops_budgets_share_one_baseline_size():
    """Growth early or late, the same total budget: the FLOP-matched baseline gets the same steps."""
    base = "baselines:\n  - {name: b, init: {num_hidden_layers: 4}}"
    grow = "  - grow: {steps: [{op: interpolate, factor: 2}]}\n"
    early = _plan(f"  - train: {{method: full, flops: 2.0e8}}\n{grow}  - train: {{method: full, flops: 8.0e8}}", base)
    late = _plan(f"  - train: {{method: full, flops: 8.0e8}}\n{grow}  - train: {{method: full, flops: 2.0e8}}", base)
    assert early.stages[0].steps < late.stages[0].steps
    assert early.baselines[0].options.steps == late.baselines[0].options.steps


@pytest.mark.parametrize(
    "stage, needle",
    [
        ("  - train: {method: full, flops: 1.0e9, steps: 3}", "give one budget: flops, or steps/tokens"),
        ("  - train: {method: full, flops: 10}", "buy less than one"),
        ("  - train: {method: full, flops: -1}", "greater than 0"),
    ],
    ids=["flops-and-steps", "too-small", "negative"],
)
def test_bad_flops_budgets_are_refused(stage, needle):
    with pytest.raises(RecipeError, match=needle):
        _plan(stage)
