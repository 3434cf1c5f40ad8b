"""Compile a whole plan into one layer map over the source layers, step by step."""

from __future__ import annotations

from dataclasses import dataclass

from modelsurgeon.errors import PlanError
from modelsurgeon.ops.depth import DEPTH_OPS
from modelsurgeon.ops.layermap import Equivalence, LayerMap, classify, compose, identity_map, weakest
from modelsurgeon.plan.schema import Plan


@dataclass(frozen=True)
class StepResult:
    op: str
    layers_in: int
    layers_out: int
    equivalence: Equivalence


@dataclass(frozen=True)
class Compiled:
    layer_map: LayerMap
    steps: tuple[StepResult, ...]

    @property
    def equivalence(self) -> Equivalence:
        return weakest([s.equivalence for s in self.steps])


def compile_plan(plan: Plan, n_layers: int, origin: str = "<plan>") -> Compiled:
    """Raises PlanError with each failing step's location and the valid range. A step that fails
    leaves the layer count unknown, so later steps are checked only up to the first failure."""
    current = identity_map(n_layers)
    results: list[StepResult] = []
    for i, step in enumerate(plan.steps):
        try:
            local = DEPTH_OPS[step.op](step, len(current))
        except ValueError as exc:
            problems = [f"steps[{i}].{exc} (the step sees {len(current)} layers)"]
            if i + 1 < len(plan.steps):
                problems.append(f"steps[{i + 1}..] not checked: they depend on steps[{i}]")
            raise PlanError(origin, problems, hint="fix the step to fit the model's layer count") from None
        results.append(StepResult(step.op, len(current), len(local), classify(local, len(current))))
        current = compose(current, local)
    return Compiled(current, tuple(results))
