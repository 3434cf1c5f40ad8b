"""The sweep file of `surgeon sweep`: a base recipe, seeds, axes of patches, and what to tune.

    name: operators
    recipe: plans/recipes/seed-idea.yaml     # relative to the current directory, like every path
    seeds: [0, 1, 2]
    patches: {defaults.log_every: 10}         # applied to every arm first (optional)
    axes:                                     # arms = the product of the axes' values
      operator:
        split: {stages.grow.*.steps: [{op: interpolate, factor: 2, branch_scale: split}]}
        stack: {stages.grow.*.steps: [{op: stack, factor: 2}]}
    baselines: tuned                          # recipe (as written) | tuned | none
    tune: [stages.train.lr]                   # grown arms: post-growth lr from the same grid
    tuning: {factor: 3, points: 3, seed: 1000}
    target_loss: 1.5                          # for FLOPs-to-target (default: reached by every run)

Parsed into frozen pydantic models; every schema problem is reported at once with its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelsurgeon.errors import SweepError
from modelsurgeon.plan.load import problem, read_document, read_yaml
from modelsurgeon.plan.load import where as yaml_where

NAME = r"^[a-z0-9][a-z0-9_.-]*$"
SWEEP_HINTS = {
    "seeds": "a list of distinct integers >= 0, e.g. [0, 1, 2]",
    "axes": "{axis: {value_name: {dotted.path: value, ...}}}; arms are the product of the axes' values",
    "baselines": "recipe (the recipe's own learning rates), tuned (lr from a grid on validation loss) or none",
    "tune": "dotted paths of post-growth train options to tune, e.g. [stages.train.lr]",
    "tuning": "{factor: 3, points: 3, seed: 1000}: grid values factor apart, centred on the recipe's",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tuning(_Strict):
    """The grid: `points` values `factor` apart (in log space), centred on the recipe's value,
    each trained at `seed` (not one of the reported seeds) and judged on validation loss."""

    factor: float = Field(3.0, gt=1)
    points: int = Field(3, ge=2, le=9)
    seed: int = Field(1000, ge=0)

    def multipliers(self) -> list[float]:
        mid = (self.points - 1) / 2
        return [self.factor ** (i - mid) for i in range(self.points)]


class Sweep(_Strict):
    name: str = Field(pattern=NAME)
    description: str = ""
    recipe: str
    seeds: list[int] = Field([0], min_length=1)
    patches: dict[str, Any] = {}
    axes: dict[str, dict[str, dict[str, Any] | None]] = {}
    baselines: Literal["recipe", "tuned", "none"] = "recipe"
    tune: list[str] = []
    tuning: Tuning = Tuning()
    target_loss: float | None = Field(None, gt=0)
    bootstrap_samples: int = Field(2000, ge=100)
    compare_to: str | None = None  # an arm every other arm is also compared with, paired by seed

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} must be distinct integers >= 0")
        return seeds

    @field_validator("axes")
    @classmethod
    def _names(cls, axes: dict) -> dict:
        import re

        bad = [n for axis, values in axes.items() for n in (axis, *values) if not re.match(NAME, str(n))]
        if bad:
            raise ValueError(f"axis and value names {bad} must be lower-case letters, digits, '-', '_' or '.'")
        if any(not values for values in axes.values()):
            raise ValueError("every axis needs at least one value")
        return axes


@dataclass(frozen=True)
class LoadedSweep:
    sweep: Sweep
    source_text: str
    origin: str
    root: yaml.Node | None

    def where(self, *loc) -> str:
        return yaml_where(self.root, tuple(loc))


def parse_sweep(text: str, origin: str = "<sweep>") -> LoadedSweep:
    data, root = read_yaml(text, origin, SweepError, "name, recipe and seeds", "plans/sweeps/smoke.yaml")
    try:
        sweep = Sweep.model_validate(data)
    except ValidationError as exc:
        problems = [
            problem(root, tuple(e["loc"]), e["msg"].replace("Value error, ", ""), SWEEP_HINTS) for e in exc.errors()
        ]
        raise SweepError(
            origin, list(dict.fromkeys(problems)), hint="see docs/sweep.md or plans/sweeps/*.yaml"
        ) from None
    if sweep.seeds and sweep.tuning.seed in sweep.seeds and (sweep.baselines == "tuned" or sweep.tune):
        where = yaml_where(root, ("tuning", "seed"))
        raise SweepError(
            origin,
            [f"{where}: tuning seed {sweep.tuning.seed} is one of the reported seeds {sweep.seeds}"],
            hint="tuning runs must not double as reported runs: pick a tuning seed outside seeds",
        )
    return LoadedSweep(sweep, text, origin, root)


def load_sweep(path: str | Path) -> LoadedSweep:
    """A sweep from a file, or a shipped sweep by name (`smoke`, `plans/sweeps/smoke.yaml`)."""
    return parse_sweep(*read_document(path, "sweep", SweepError))
