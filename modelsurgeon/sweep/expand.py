"""Sweep file -> arms, tuning grids and runs, every expanded recipe checked before anything trains.

Arms are the product of the axes' values (each a patch over the base recipe). The recipe's
from-scratch baselines become arms of their own: one recipe with a single full-training stage,
its steps matched to the grown arm's planned FLOPs (or tokens) as `surgeon progressive` matches
them; arms with the same budget share one baseline arm. Each arm runs once per seed (the seed
rewrite of patch.seeded); a tuned arm first runs its grid at the tuning seed, and its runs use
the grid value with the lowest validation loss (tune.py)."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from modelsurgeon.data.spec import parse_data_spec
from modelsurgeon.errors import DataError, RecipeError, SurgeonError, SweepError
from modelsurgeon.plan.load import read_yaml
from modelsurgeon.plan.shipped import resolve_shipped
from modelsurgeon.progressive.planning import plan_recipe
from modelsurgeon.progressive.recipe import parse_recipe
from modelsurgeon.sweep.patch import SEED_STRIDE, absolute_paths, apply_patch, seed_values, seeded
from modelsurgeon.sweep.schema import LoadedSweep, Tuning
from modelsurgeon.sweep.tune import grid_label, tuned_recipe

BASELINE_LR = "stages.train.0.lr"  # a baseline recipe has one train stage


class Arm(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["grown", "baseline"]
    axes: dict[str, str] = {}
    pairs: list[str] = []  # grown: the baseline arms matched to its budget; baseline: the grown arms
    tuned: list[str] = []  # paths tuned on the grid (empty: the recipe's values)
    template: dict  # the recipe data before the seed rewrite (tuned paths at their centre)


class Job(BaseModel):
    """One `surgeon progressive` run: its directory (relative to the sweep's) and, for grid runs,
    the multipliers of the tuned paths."""

    model_config = ConfigDict(frozen=True)

    arm: str
    seed: int
    dir: str
    phase: Literal["tuning", "run"]
    multipliers: list[float] | None = None


class SweepManifest(BaseModel):
    """DIR/sweep.json: what `surgeon sweep` expanded; `sweep report` and --resume read it."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    sweep_file: str
    recipe_file: str
    seeds: list[int]
    tuning: Tuning
    target_loss: float | None
    bootstrap_samples: int
    arms: list[Arm]
    jobs: list[Job]
    compare_to: str | None = None  # analysis only: not part of what --resume checks

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


def _check(data: dict, label: str, problems: list[str]):
    """Validate one expanded recipe (schema, then the stage plan); its problems prefixed by `label`."""

    try:
        return plan_recipe(parse_recipe(yaml.safe_dump(data, sort_keys=False), label))
    except RecipeError as exc:
        problems += [f"{label}: {p}" for p in exc.problems]
    except SurgeonError as exc:
        problems.append(f"{label}: {exc.message}")
    return None


def _check_data_specs(data: dict, label: str, problems: list[str]) -> None:

    specs = list(data.get("data") or [])
    for stage in data.get("stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("train"), dict):
            specs += stage["train"].get("data") or []
    for spec in dict.fromkeys(s for s in specs if isinstance(s, str)):
        try:
            parse_data_spec(spec)
        except DataError as exc:
            problems.append(f"{label}: {exc.message}")


def _grown_arms(loaded: LoadedSweep, base: dict, problems: list[str]) -> list[Arm]:
    s = loaded.sweep
    common = copy.deepcopy(base)
    problems += [f"{loaded.where('patches', p)}: {m}" for p, m in _patch(common, s.patches)]
    names = list(s.axes)
    arms = []
    for combo in itertools.product(*(list(s.axes[a]) for a in names)):
        data = copy.deepcopy(common)
        for axis, value in zip(names, combo):
            problems += [
                f"{loaded.where('axes', axis, value, p)}: {m}" for p, m in _patch(data, s.axes[axis][value] or {})
            ]
        name = ",".join(f"{a}={v}" for a, v in zip(names, combo)) or str(base.get("name", "recipe"))
        arms.append(Arm(name=name, kind="grown", axes=dict(zip(names, combo)), tuned=list(s.tune), template=data))
    return arms


def _patch(data: dict, patch: dict) -> list[tuple[str, str]]:
    return [(str(path), msg) for path in patch for msg in apply_patch(data, {path: patch[path]})]


def _baseline_recipe(arm: Arm, planned, sweep_name: str) -> dict:
    """The recipe of one of ARM's baselines: its init, the recipe's data, eval and defaults, one
    full-training stage of the matched number of steps (what progressive trains inline)."""
    t, b = arm.template, planned.spec
    init = {**(t.get("init") or {}), **b.init}
    train = {"method": "full", **b.train, "steps": planned.options.steps}
    return {
        "name": f"{sweep_name}-{b.name}"[:80],
        "description": f"{b.name}: from scratch, {b.match}-matched ({train['steps']} steps)",
        "init": init,
        "data": t["data"],
        "eval": t.get("eval", {}),
        "defaults": t.get("defaults", {}),
        "stages": [{"train": train}],
    }


def _baseline_arms(
    loaded: LoadedSweep, grown: list[Arm], plans: dict, problems: list[str]
) -> tuple[list[Arm], list[Arm]]:
    """Baseline arms (deduplicated by recipe) and the grown arms with `pairs` filled in."""
    found: dict[str, dict] = {}  # recipe json -> {"spec": name, "recipe", "arms": [...]}
    for arm in grown:
        plan = plans.get(arm.name)
        for pb in plan.baselines if plan is not None else []:
            recipe = _baseline_recipe(arm, pb, loaded.sweep.name)
            key = json.dumps(recipe, sort_keys=True, default=str)
            found.setdefault(key, {"spec": pb.spec.name, "recipe": recipe, "arms": []})["arms"].append(arm.name)
    per_spec = {}
    for entry in found.values():
        per_spec.setdefault(entry["spec"], []).append(entry)
    tuned = [BASELINE_LR] if loaded.sweep.baselines == "tuned" else []
    baselines, pairs = [], {a.name: [] for a in grown}
    for spec, entries in per_spec.items():
        for e in entries:
            name = spec if len(entries) == 1 else f"{spec}@{e['arms'][0]}"
            baselines.append(Arm(name=name, kind="baseline", pairs=e["arms"], tuned=tuned, template=e["recipe"]))
            for a in e["arms"]:
                pairs[a].append(name)
    grown = [a.model_copy(update={"pairs": pairs[a.name], "template": _without_baselines(a.template)}) for a in grown]
    return grown, baselines


def _without_baselines(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "baselines"}


def _seed_problems(data: dict, label: str) -> list[str]:
    return [
        f"{label}: {where} = {v}: sweep seeds shift every seed by seed x {SEED_STRIDE}, so recipe seeds must be in "
        f"0..{SEED_STRIDE - 1} (else two sweep seeds could share a stream)"
        for where, v in seed_values(data)
        if not 0 <= int(v) < SEED_STRIDE
    ]


def _jobs(arm: Arm, seeds: list[int], tuning: Tuning) -> list[Job]:
    jobs = []
    if arm.tuned:
        for mults in itertools.product(tuning.multipliers(), repeat=len(arm.tuned)):
            jobs.append(
                Job(
                    arm=arm.name,
                    seed=tuning.seed,
                    dir=f"tuning/{arm.name}/{grid_label(mults)}",
                    phase="tuning",
                    multipliers=list(mults),
                )
            )
    jobs += [Job(arm=arm.name, seed=s, dir=f"runs/{arm.name}/seed-{s}", phase="run") for s in seeds]
    return jobs


def _base_recipe(loaded: LoadedSweep, base_dir: Path) -> dict:
    """The sweep's recipe as data, its paths made absolute; its baselines dropped with `baselines: none`."""
    s = loaded.sweep
    recipe_path = resolve_shipped(s.recipe, "recipe")
    if recipe_path is None:
        raise SweepError(
            loaded.origin,
            [f"{loaded.where('recipe')}: recipe {s.recipe} not found"],
            hint="recipe: a path relative to the current directory or a shipped recipe's name, e.g. seed-idea",
        )
    data, _ = read_yaml(
        recipe_path.read_text(), str(recipe_path), SweepError, "a recipe", "plans/recipes/seed-idea.yaml"
    )
    if s.baselines == "none":
        data = _without_baselines(data)
    return absolute_paths(data, base_dir)


def _check_grown(loaded: LoadedSweep, grown: list[Arm], problems: list[str]) -> dict:
    """Check every grown arm at every seed; return each arm's plan (at the first seed), which
    sizes its baselines."""
    plans = {}
    for arm in grown:
        problems += _seed_problems(arm.template, f"arm {arm.name}")
        for seed in loaded.sweep.seeds:
            plan = _check(seeded(arm.template, seed), f"arm {arm.name}, seed {seed}", problems)
            plans.setdefault(arm.name, plan)
        _check_data_specs(arm.template, f"arm {arm.name}", problems)
    return plans


def _check_derived(loaded: LoadedSweep, arms: list[Arm], problems: list[str]) -> None:
    """Check what expansion derived from the checked arms: baseline recipes and tuning grids."""
    s = loaded.sweep
    for arm in arms:
        if arm.kind == "baseline":
            for seed in s.seeds:
                _check(seeded(arm.template, seed), f"arm {arm.name}, seed {seed}", problems)
        for mults in itertools.product(s.tuning.multipliers(), repeat=len(arm.tuned)) if arm.tuned else []:
            data = tuned_recipe(arm, list(mults), problems)
            if data is not None:
                _check(seeded(data, s.tuning.seed), f"arm {arm.name}, grid {grid_label(mults)}", problems)


def _check_compare_to(loaded: LoadedSweep, arms: list[Arm]) -> None:
    s = loaded.sweep
    if s.compare_to is not None and s.compare_to not in {a.name for a in arms}:
        names = ", ".join(a.name for a in arms)
        raise SweepError(
            loaded.origin,
            [f"{loaded.where('compare_to')}: compare_to {s.compare_to!r} is not an arm of this sweep ({names})"],
            hint="name one of the arms, e.g. compare_to: arm=full",
        )


def expand(loaded: LoadedSweep, base_dir: Path | None = None) -> SweepManifest:
    """Every arm, grid and run of the sweep, each expanded recipe validated (schema and stage plan,
    baselines FLOP-matched). Raises SweepError listing every problem; nothing is written."""
    s, problems = loaded.sweep, []
    grown = _grown_arms(loaded, _base_recipe(loaded, base_dir or Path.cwd()), problems)
    plans = _check_grown(loaded, grown, problems)
    if problems:
        raise SweepError(loaded.origin, problems, hint="fix these before anything trains; nothing was written")
    grown, baselines = _baseline_arms(loaded, grown, plans, problems)
    arms = grown + baselines
    _check_derived(loaded, arms, problems)
    if problems:
        # every grid point of an arm reports the same tune problem: list it once
        raise SweepError(
            loaded.origin, list(dict.fromkeys(problems)), hint="fix these before anything trains; nothing was written"
        )
    _check_compare_to(loaded, arms)
    jobs = [j for arm in arms for j in _jobs(arm, s.seeds, s.tuning)]
    return SweepManifest(
        name=s.name,
        description=s.description,
        sweep_file=loaded.origin,
        recipe_file=s.recipe,
        seeds=s.seeds,
        tuning=s.tuning,
        target_loss=s.target_loss,
        bootstrap_samples=s.bootstrap_samples,
        arms=arms,
        jobs=jobs,
        compare_to=s.compare_to,
    )
