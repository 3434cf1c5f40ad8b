"""The recipe format of `surgeon progressive`: a start model, data, eval, an ordered list of
`train:` / `grow:` stages, and optional from-scratch baselines. YAML -> frozen pydantic models,
every schema problem reported at once with its YAML path and line (as plans are).

    name: seed-idea
    init: {family: llama, hidden_size: 64, num_hidden_layers: 3, tokenizer: arith}   # or start: DIR
    data: ["synthetic:arith:n=20000,max_k=4"]
    eval: {arith: {max_k: 8, per_k: 50}}
    defaults: {seq_len: 128, batch_size: 16}          # train-stage options every stage starts from
    stages:
      - train: {method: full, steps: 300, lr: 1e-3, trigger: [{plateau: {window: 5}}]}
      - grow: {steps: [{op: interpolate, factor: 2, branch_scale: split}]}   # or {plan: FILE}
      - train: {method: lora, steps: 200, lr_policy: rewarm}     # or flops: 2.0e12 instead of steps
    baselines:
      - {name: scratch-6, init: {num_hidden_layers: 6}, match: flops}

Relative paths (start, plan files, a tokenizer directory) are relative to the current directory,
as on every other command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelsurgeon.errors import RecipeError
from modelsurgeon.plan.load import problem, read_document, read_yaml
from modelsurgeon.plan.load import where as yaml_where
from modelsurgeon.plan.shipped import doc_path
from modelsurgeon.progressive.evals import DmMathEval
from modelsurgeon.progressive.init import InitModel
from modelsurgeon.progressive.monitor import ArithEval
from modelsurgeon.progressive.triggers import Trigger
from modelsurgeon.progressive.word_problems import WordProblemEval

STAGE_KINDS = ("train", "grow")
LrPolicy = Literal["rewarm", "keep_peak", "wsd"]
# Sugar for the learning rate at growth, as train-stage fields (explicit fields in the stage win):
# rewarm = linear re-warm-up then cosine (Reddi et al.); keep_peak = start at the peak and decay
# within the stage (LEMON's "keep max LR, faster decay"); wsd = warm-up, stable, 20% decay (Bu et al.).
LR_POLICIES: dict[str, dict] = {
    "rewarm": {"schedule": "cosine"},
    "keep_peak": {"schedule": "cosine", "warmup": 0},
    "wsd": {"schedule": "wsd"},
}
RECIPE_HINTS = {
    "stages": "each stage is `train: {...}` (train-stage options) or `grow: {...}` (a plan or plan: FILE)",
    "trigger": "a list of {steps: N} | {tokens: N} | {plateau: {window, min_rel_improvement, patience}} "
    "| {du_token_rule: {}}",
    "match": "flops (same training FLOPs as the whole progressive run) or tokens",
    "lr_policy": "rewarm | keep_peak | wsd",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSpec(BaseModel):
    """`train:`: train-stage options (checked with the defaults merged in), plus when to stop."""

    model_config = ConfigDict(extra="allow", frozen=True)

    trigger: list[Trigger] = []
    lr_policy: LrPolicy | None = None
    rewarm_steps: int | None = Field(None, ge=0)  # warm-up steps after a growth (rewarm, wsd)
    # A budget in training FLOPs instead of steps/tokens: steps = round(flops / FLOPs per step),
    # so arms with different models or methods get equal compute (growth at a share of a budget).
    flops: float | None = Field(None, gt=0)

    def options(self, defaults: dict, data: list[str]) -> dict:
        """Train-stage option fields: defaults, then the LR policy, then the stage's own."""
        fields = {**defaults, "data": data}
        if self.lr_policy is not None:
            fields.update(LR_POLICIES[self.lr_policy])
        if self.rewarm_steps is not None:
            fields["warmup"] = self.rewarm_steps
        return {**fields, **(self.model_extra or {})}


class GrowSpec(BaseModel):
    """`grow:`: `plan: FILE`, or a plan written inline (its `steps`, optionally `name`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    plan: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> GrowSpec:
        inline = self.model_extra or {}
        if (self.plan is None) == (not inline):
            raise ValueError("give either plan: FILE or an inline plan with steps: [...], not both or neither")
        return self


class Stage(_Strict):
    train: TrainSpec | None = None
    grow: GrowSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _kind(cls, data):
        if not isinstance(data, dict) or len(data) != 1:
            raise ValueError("a stage is a mapping with one key: train or grow")
        kind = next(iter(data))
        if kind not in STAGE_KINDS:
            raise ValueError(f"unknown stage kind {kind!r}; stages are {' or '.join(STAGE_KINDS)}")
        if data[kind] is None:
            return {kind: {}}
        return data

    @property
    def kind(self) -> str:
        return "train" if self.train is not None else "grow"


class Baseline(_Strict):
    """A model trained from scratch (method full) on the same data, its budget matched to the run."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    init: dict = {}  # fields over the recipe's init (e.g. only num_hidden_layers), or a full init
    match: Literal["flops", "tokens"] = "flops"
    train: dict = {}  # train-stage options; steps/tokens come from the match


class EvalSpec(_Strict):
    arith: ArithEval | None = ArithEval()
    dm_math: DmMathEval | None = None  # DeepMind mathematics: interpolation and extrapolation test sets
    word_problems: WordProblemEval | None = None  # held-out word problems with numeric answers (a .jsonl)


class Recipe(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    start: str | None = None
    init: InitModel | None = None
    data: list[str] = Field(min_length=1)
    eval: EvalSpec = EvalSpec()
    defaults: dict = {}
    stages: list[Stage] = Field(min_length=1)
    baselines: list[Baseline] = []

    @model_validator(mode="after")
    def _start(self) -> Recipe:
        if (self.start is None) == (self.init is None):
            raise ValueError("give exactly one start model: start: CHECKPOINT_DIR or init: {family: ..., ...}")
        return self


@dataclass(frozen=True)
class LoadedRecipe:
    recipe: Recipe
    source_text: str
    origin: str
    root: yaml.Node | None  # for line numbers of problems found after the schema check

    def where(self, *loc) -> str:
        return yaml_where(self.root, tuple(loc))


def _problems(exc: ValidationError, root: yaml.Node | None) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or not p[:1].isupper() and "[" not in p)
        problems.append(problem(root, loc, err["msg"].replace("Value error, ", ""), RECIPE_HINTS))
    return list(dict.fromkeys(problems))


def parse_recipe(text: str, origin: str = "<recipe>") -> LoadedRecipe:
    """Validate recipe YAML text against the schema (no files or models are read yet)."""
    data, root = read_yaml(
        text, origin, RecipeError, "name, data and stages", f"{doc_path('progressive.md')} and `surgeon plan list`"
    )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(
            origin, _problems(exc, root), hint=f"see {doc_path('progressive.md')}; examples: `surgeon plan list`"
        ) from None
    return LoadedRecipe(recipe, text, origin, root)


def load_recipe(path: str | Path) -> LoadedRecipe:
    """A recipe from a file, or a shipped recipe by name (`seed-idea`, `plans/recipes/seed-idea.yaml`)."""
    return parse_recipe(*read_document(path, "recipe", RecipeError))
