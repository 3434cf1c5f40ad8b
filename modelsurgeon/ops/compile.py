"""Compile a whole plan: depth steps into one layer map over the source layers, widen steps
into one width plan (widening applies to every layer, so the two commute)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from modelsurgeon.arch.spec import ArchSpec
from modelsurgeon.errors import PlanError
from modelsurgeon.ops.depth import DEPTH_OPS, layers
from modelsurgeon.ops.layermap import Equivalence, LayerMap, Local, classify, compose, identity_map, weakest
from modelsurgeon.ops.moe import ExpertGrowth, apply_step, start
from modelsurgeon.plan.schema import Experts, LayerMapStep, Plan, Upcycle, Widen

if TYPE_CHECKING:  # width maps need torch; plans without widen steps never import it
    from modelsurgeon.ops.width import Dims, WidthPlan


class StepResult(BaseModel):
    """What one plan step did, as surgeon.json's `steps` records it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    op: str
    layers_in: int
    layers_out: int
    equivalence: Equivalence


@dataclass(frozen=True)
class Compiled:
    layer_map: LayerMap
    steps: tuple[StepResult, ...]
    width: WidthPlan | None = None
    moe: ExpertGrowth | None = None  # set for an MoE output (upcycled, or an MoE source)

    @property
    def equivalence(self) -> Equivalence:
        return weakest([s.equivalence for s in self.steps])


class _Widths:
    """Accumulates widen steps; dims is None for families whose roles are unknown."""

    def __init__(self, spec: ArchSpec | None, dims: Dims | None) -> None:
        self.spec, self.src, self.dims, self.plan = spec, dims, dims, None

    def apply(self, step: Widen) -> Equivalence:
        if self.dims is None or self.spec is None:
            raise ValueError("op: widen needs the family's tensor roles, which this model's family lacks in the table")
        if step.noise is not None and self.plan is not None and self.plan.noise is not None:
            raise ValueError("noise: set noise on one widen step only")
        # lazy: modelsurgeon.ops.width imports torch/transformers
        from modelsurgeon.ops.width import compose_plan, widen_step

        new, maps, cls = widen_step(step, self.dims, self.spec)
        self.plan = compose_plan(self.plan, self.src, new, maps, step.noise)
        self.dims = new
        return cls


def _depth(step, n: int, models: dict[str, tuple[int, int]], sparse: bool) -> Local:
    if not isinstance(step, LayerMapStep):
        return DEPTH_OPS[step.op](step, n)
    local = layers(step, n, models)
    if sparse and any(e.model for e in local):
        raise ValueError("map: layers from other models are not supported for mixture-of-experts models yet")
    return local


def compile_plan(
    plan: Plan,
    n_layers: int,
    origin: str = "<plan>",
    spec: ArchSpec | None = None,
    dims: Dims | None = None,
    sparse: tuple[bool, ...] | None = None,
    config: dict | None = None,
    models: dict[str, tuple[int, int]] | None = None,
) -> Compiled:
    """Raises PlanError with each failing step's location and the valid range. A step that fails
    leaves the model's shape unknown, so later steps are checked only up to the first failure.
    `sparse` (with `config`) marks an MoE source's layers that hold experts; `models` maps each
    other checkpoint the plan names to (model index, layer count)."""
    current = identity_map(n_layers)
    widths = _Widths(spec, dims)
    moe = start(spec, sparse, config or {})
    results: list[StepResult] = []
    for i, step in enumerate(plan.steps):
        try:
            if isinstance(step, (Upcycle, Experts)):
                if spec is None or not spec.known:
                    raise ValueError(f"op: {step.op} needs the family's tensor roles, which this model's family lacks")
                if any(e.model for e in current):
                    raise ValueError(f"op: {step.op} after layers from other models is not supported yet")
                moe, cls = apply_step(step, moe, spec, len(current))
                results.append(StepResult(op=step.op, layers_in=len(current), layers_out=len(current), equivalence=cls))
                continue
            if isinstance(step, Widen) and moe is not None:
                raise ValueError("op: widen does not grow mixture-of-experts layers yet; widen before upcycling")
            if isinstance(step, Widen):
                cls = widths.apply(step)
                results.append(StepResult(op=step.op, layers_in=len(current), layers_out=len(current), equivalence=cls))
                continue
            local: Local = _depth(step, len(current), models or {}, moe is not None)
        except ValueError as exc:
            problems = [f"steps[{i}].{exc} (the step sees {len(current)} layers)"]
            if i + 1 < len(plan.steps):
                problems.append(f"steps[{i + 1}..] not checked: they depend on steps[{i}]")
            raise PlanError(origin, problems, hint="fix the step to fit the model") from None
        layers_out, equivalence = len(local), classify(local, len(current))
        results.append(StepResult(op=step.op, layers_in=len(current), layers_out=layers_out, equivalence=equivalence))
        current = compose(current, local)
        moe = moe.remap(local) if moe is not None else None
    return Compiled(current, tuple(results), widths.plan, moe)
