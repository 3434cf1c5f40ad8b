"""Check a recipe against its start model before anything trains: simulate the layer count
through the stages, validate each stage's options and growth plan at that point, budget every
stage in steps, tokens and FLOPs, and size the baselines to match. Every problem at once."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from modelsurgeon.arch.registry import load_specs
from modelsurgeon.errors import RecipeError, SurgeonError
from modelsurgeon.grow.engine import prepare, widen_config
from modelsurgeon.io.hub import resolve_model
from modelsurgeon.ops.compile import compile_plan
from modelsurgeon.ops.width import model_dims
from modelsurgeon.plan.load import load_plan, parse_plan
from modelsurgeon.plan.schema import Widen
from modelsurgeon.plan.selection import resolve_selection
from modelsurgeon.progressive.flops import ArchCounts, StageFlops, stage_flops
from modelsurgeon.progressive.init import InitModel, counts_of_checkpoint, counts_of_config, init_config, load_tokenizer
from modelsurgeon.progressive.recipe import Baseline, LoadedRecipe, Stage
from modelsurgeon.train.options import make_options


@dataclass
class PlannedStage:
    index: int  # 1-based position in the recipe
    kind: str  # train | grow
    n_layers: int  # after the stage
    counts: ArchCounts
    options: object = None  # TrainOptions (train)
    seq_len: int = 0
    steps: int = 0  # the cap (train)
    flops: StageFlops | None = None  # at the cap (train)
    trained_layers: int | None = None
    plan: object = None  # LoadedPlan (grow)
    new_layers: int = 0  # layers the growth added (grow)
    widened: bool = False  # the growth changed the layers' shape (grow)
    config: dict | None = None  # the model's config.json after the stage (grow; train keeps it)

    @property
    def name(self) -> str:
        return f"{self.index:02d}-{self.kind}"


@dataclass
class PlannedBaseline:
    spec: Baseline
    init: InitModel
    counts: ArchCounts
    options: object  # TrainOptions with steps set from the match
    seq_len: int
    per_step_flops: int


@dataclass
class RecipePlan:
    loaded: LoadedRecipe
    start_counts: ArchCounts
    max_positions: int
    stages: list[PlannedStage] = field(default_factory=list)
    baselines: list[PlannedBaseline] = field(default_factory=list)
    start_dir: Path | None = None  # the `start:` checkpoint's directory (a hub id resolved)
    start_config: dict = field(default_factory=dict)  # the start model's config.json

    @property
    def total_flops(self) -> int:
        return sum(s.flops.total for s in self.stages if s.flops)

    @property
    def total_tokens(self) -> int:
        return sum(s.flops.tokens for s in self.stages if s.flops)

    @property
    def final_counts(self) -> ArchCounts:
        return self.stages[-1].counts if self.stages else self.start_counts

    @property
    def config(self) -> dict:
        """The current model's config: the start's, as the last growth rewrote it."""
        return next((s.config for s in reversed(self.stages) if s.config is not None), self.start_config)


def _start(loaded: LoadedRecipe, problems: list[str]) -> tuple[ArchCounts | None, int, Path | None, dict]:
    """The start model's counts, positions, directory (`start:` may be a hub id) and config."""
    r = loaded.recipe
    try:
        if r.init is not None:
            config = init_config(r.init, load_tokenizer(r.init.tokenizer, Path.cwd()))
            positions = getattr(config, "max_position_embeddings", None) or 1024
            return counts_of_config(config), positions, None, config.to_dict()
        start = resolve_model(r.start)
        counts = counts_of_checkpoint(start)
        cfg = json.loads((start / "config.json").read_text())
        return counts, cfg.get("max_position_embeddings") or cfg.get("n_positions") or 1024, start, cfg
    except (SurgeonError, ValueError, OSError) as exc:
        key = "init" if r.init is not None else "start"
        problems.append(f"{loaded.where(key)}: {exc}")
        return None, 0, None, {}


def _options(fields: dict, where: str, problems: list[str]):

    try:
        return make_options(**fields)
    except SurgeonError as exc:
        problems.append(f"{where}: {exc.message.replace(chr(10) + '  - ', '; ')}")
        return None


def lora_targets(options, counts: ArchCounts) -> list[str] | None:
    """LoRA module suffixes for FLOP counting: --targets names a role, module or its last part."""
    if options.targets is None:
        return None
    return [m for m, _, _ in counts.linears if m in options.targets or m.rsplit(".", 1)[-1] in options.targets] or None


def _train_options(plan: RecipePlan, stage: Stage, where: str, problems: list[str]):
    """The stage's TrainOptions; a `flops` budget sets steps later, so steps/tokens must be absent."""
    r = plan.loaded.recipe
    fields = stage.train.options(r.defaults, r.data)
    if stage.train.flops is not None:
        if {"steps", "tokens"} & set(stage.train.model_extra or {}):
            problems.append(f"{where}: give one budget: flops, or steps/tokens, not both")
            return None
        fields = {k: v for k, v in fields.items() if k not in ("steps", "tokens")} | {"steps": 1}
    return _options(fields, where, problems)


def _trained_layers(
    options, counts: ArchCounts, prev: PlannedStage | None, where: str, problems: list[str]
) -> tuple[bool, int | None]:
    """Whether the stage can train, and how many layers it trains (None: all) for FLOP counting."""
    if options.train_method.layers == "new":
        if prev is None or prev.kind != "grow":
            problems.append(
                f"{where}: method {options.method} trains the layers a growth added; put it right after a grow stage"
            )
            return False, None
        if not prev.new_layers:
            problems.append(
                f"{where}: method {options.method} trains the layers a growth added, and this growth added none"
            )
            return False, None
        return True, prev.new_layers
    if options.layers is not None:
        try:
            return True, len(resolve_selection(options.layers, counts.n_layers))
        except ValueError as exc:
            problems.append(f"{where}: layers: {exc}")
    return True, None


def _placement_problems(plan: RecipePlan, options, prev: PlannedStage | None, i: int) -> list[str]:
    """Options that only make sense at some points of the recipe, checked against this point."""
    found = []
    first_train = not any(s.kind == "train" for s in plan.stages)
    if options.train_method.adapter and plan.loaded.recipe.init is not None and first_train:
        found.append(
            "the start model is randomly initialised, so its first train stage must be method full (not "
            f"{options.method})"
        )
    if options.ramp_new is not None and (prev is None or prev.kind != "grow"):
        found.append("ramp_new fades in the layers a growth added; put the stage right after a grow stage")
    if options.carry_optimizer not in (None, "reset") and (prev is None or prev.kind != "grow" or i < 2):
        found.append(
            "carry_optimizer carries AdamW state across a growth; the stage must follow a grow that "
            "follows a train stage"
        )
    if options.carry_optimizer not in (None, "reset") and prev is not None and prev.widened:
        found.append("carry_optimizer maps AdamW state through a layer map, not a widen; use reset")
    return found


def _cost(options, counts: ArchCounts, seq_len: int, trained: int | None, steps: int) -> StageFlops:
    """What `steps` steps of the stage cost."""
    return stage_flops(
        counts,
        steps * options.tokens_per_step(seq_len),
        seq_len,
        options.method,
        lora_r=options.lora_r,
        lora_targets=lora_targets(options, counts),
        trained_layers=trained,
    )


def _train(plan: RecipePlan, stage: Stage, i: int, counts: ArchCounts, prev: PlannedStage | None, problems: list[str]):
    where = plan.loaded.where("stages", i, "train")
    options = _train_options(plan, stage, where, problems)
    if options is None:
        return None
    ok, trained = _trained_layers(options, counts, prev, where, problems)
    if not ok:
        return None
    problems += [f"{where}: {p}" for p in _placement_problems(plan, options, prev, i)]
    seq_len = options.sequence_length(plan.max_positions)
    if seq_len > plan.max_positions:
        problems.append(f"{where}: seq_len {seq_len} exceeds the model's {plan.max_positions} positions")
    steps = options.total_steps(seq_len)
    if stage.train.flops is not None:
        step_flops = _cost(options, counts, seq_len, trained, 1).total
        steps = round(stage.train.flops / step_flops)
        if steps < 1:
            problems.append(f"{where}: flops {stage.train.flops:.3g} buy less than one {step_flops:.3g}-FLOP step")
            return None
        options = options.model_copy(update={"steps": steps})
    cost = _cost(options, counts, seq_len, trained, steps)
    return PlannedStage(i + 1, "train", counts.n_layers, counts, options, seq_len, steps, cost, trained)


def _grow(plan: RecipePlan, stage: Stage, i: int, counts: ArchCounts, problems: list[str]):
    loaded, r = plan.loaded, plan.loaded.recipe
    where = loaded.where("stages", i, "grow")
    g = stage.grow
    config = plan.config
    spec = load_specs().get(config.get("model_type", ""))
    try:
        if g.plan is not None:
            lp = load_plan(g.plan)
        else:
            text = yaml.safe_dump({"name": f"stage-{i + 1:02d}", **g.model_extra})
            lp = parse_plan(text, f"{loaded.origin}: stages[{i}].grow")
        widens = any(isinstance(s, Widen) for s in lp.plan.steps)
        if not any(s.kind == "grow" for s in plan.stages) and r.start is not None and not plan.stages:
            compiled = prepare(r.start, lp).compiled  # checks branch scaling against the real checkpoint
        else:
            dims = _dims(spec, config) if widens and spec is not None else None
            compiled = compile_plan(lp.plan, counts.n_layers, lp.origin, spec, dims)
    except SurgeonError as exc:
        detail = "; ".join(getattr(exc, "problems", [])) or exc.message
        problems.append(f"{where}: the plan does not fit the {counts.n_layers}-layer model at this point: {detail}")
        return None
    layer_map, width = compiled.layer_map, compiled.width
    new_config = dict(config, **{spec.num_layers_key: len(layer_map)}) if spec is not None else None
    if width is None:
        after = counts.with_layers(len(layer_map))
    else:  # the layers change shape: count the grown model's config afresh
        tied = bool(getattr(_config_object(config), spec.tie_key, False))
        widen_config(new_config, spec, width, untied=tied and width.dst.hidden % width.src.hidden != 0)
        after = counts_of_config(_config_object(new_config))
    new = sum(1 for e in layer_map if e.new)
    return PlannedStage(
        i + 1, "grow", len(layer_map), after, plan=lp, new_layers=new, widened=width is not None, config=new_config
    )


def _dims(spec, config: dict):
    """The width dimensions of a config (the FFN width from its key, GPT-2's null n_inner = 4x)."""
    keys = spec.config_keys
    ffn = config.get(keys.ffn) if keys.ffn else None
    return model_dims(spec, config, ffn or 4 * config[keys.hidden])


def _config_object(config: dict):
    from transformers import AutoConfig

    fields = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    return AutoConfig.for_model(config["model_type"], **fields)


def _baseline(plan: RecipePlan, b: Baseline, i: int, problems: list[str]) -> PlannedBaseline | None:
    loaded, r = plan.loaded, plan.loaded.recipe
    where = loaded.where("baselines", i)
    base = r.init.model_dump() if r.init is not None else {}
    try:
        init = InitModel.model_validate({**base, **b.init})
        config = init_config(init, load_tokenizer(init.tokenizer, Path.cwd()))
        counts = counts_of_config(config)
    except (ValueError, OSError) as exc:
        problems.append(
            f"{where}.init: {exc} (a baseline is built from scratch: give init fields over the recipe's init)"
        )
        return None
    fixed = [k for k in ("steps", "tokens") if k in b.train]
    if fixed:
        problems.append(f"{where}.train: {'/'.join(fixed)} is set by match: {b.match}; remove it")
        return None
    options = _options(
        {**r.defaults, "data": r.data, "method": "full", **b.train, "steps": 1}, f"{where}.train", problems
    )
    if options is None:
        return None
    if options.method != "full":
        problems.append(f"{where}.train: a from-scratch baseline trains with method full, not {options.method}")
        return None
    seq_len = options.sequence_length(plan.max_positions)
    per_step = stage_flops(counts, options.tokens_per_step(seq_len), seq_len, "full").total
    steps = match_steps(b.match, plan.total_flops, plan.total_tokens, per_step, options.tokens_per_step(seq_len))
    if steps < 1:
        problems.append(
            f"{where}: cannot be FLOP-matched: the progressive run's {plan.total_flops:.3g} planned FLOPs "
            f"buy less than one {per_step:.3g}-FLOP step of this {counts.n_layers}-layer baseline "
            f"[hint: lengthen the stages, or shrink the baseline's batch_size/seq_len]"
        )
        return None
    return PlannedBaseline(b, init, counts, options.model_copy(update={"steps": steps}), seq_len, per_step)


def match_steps(match: str, flops: int, tokens: int, per_step_flops: int, tokens_per_step: int) -> int:
    """Baseline steps whose FLOPs (or tokens) are nearest the progressive run's total."""
    if match == "tokens":
        return math.ceil(tokens / tokens_per_step)
    return round(flops / per_step_flops)


def plan_recipe(loaded: LoadedRecipe) -> RecipePlan:
    """Raises RecipeError listing every problem; nothing is trained or written."""
    problems: list[str] = []
    counts, max_positions, start_dir, config = _start(loaded, problems)
    if counts is None:
        raise RecipeError(loaded.origin, problems, hint="fix the start model")
    plan = RecipePlan(loaded, counts, max_positions, start_dir=start_dir, start_config=config)
    for i, stage in enumerate(loaded.recipe.stages):
        prev = plan.stages[-1] if plan.stages else None
        current = plan.final_counts
        planned = (
            _train(plan, stage, i, current, prev, problems)
            if stage.kind == "train"
            else _grow(plan, stage, i, current, problems)
        )
        if planned is None and stage.kind == "grow":
            break  # later stages depend on the layer count this one would have produced
        if planned is not None:
            plan.stages.append(planned)
    if not problems:
        plan.baselines = [p for i, b in enumerate(loaded.recipe.baselines) if (p := _baseline(plan, b, i, problems))]
    if problems:
        raise RecipeError(loaded.origin, problems, hint="fix these before training; nothing was written")
    return plan
