"""Options of one training stage, validated at the boundary, and the budget and schedule
arithmetic derived from them. `TrainOptions` is the one source of the options' defaults and help:
the CLI's train-stage flags are generated from its fields, a --config YAML file holds the same
fields, and `surgeon progressive` recipes build the same frozen model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from modelsurgeon.errors import TrainError
from modelsurgeon.plan.schema import Selection
from modelsurgeon.train.methods import METHODS, TrainMethod, method_names
from modelsurgeon.train.methods.registry import unknown_method

Schedule = Literal["cosine", "linear", "constant", "wsd"]
CarryPolicy = Literal["reset", "copy", "scale"]
# Transformers' scheduler names for ours; WSD is "warmup_stable_decay".
SCHEDULER_NAMES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "wsd": "warmup_stable_decay",
}
WARMUP_FRACTION = 0.05  # of the steps, without --warmup
MAX_SEQ_LEN = 1024  # without --seq-len: this, or the model's positions if fewer
SELECTION_FORMS = "all, 0,5,-1, '{from: 8, to: 24}', '{every: 4}' or '{middle: 4}' (as in plans)"

_METHOD_HELP = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
_LR_HELP = ", ".join(f"{m.name} {m.default_lr:.0e}".replace("e-0", "e-") for m in METHODS.values())


class RampNew(BaseModel):
    """`ramp_new`: Gradual DropIn of the layers the last growth added (see train/ramp.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(ge=1)  # the new layers' branch scale rises linearly from 0 to 1 over these steps


class TrainOptions(BaseModel):
    """Everything `surgeon train-stage` can be told, with its defaults and help (the CLI's
    options, --config files and `surgeon progressive` train stages are all built from this)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field("lora", description=f"What trains. {_METHOD_HELP}.")
    data: list[str] = Field(
        min_length=1,
        description="Training data, repeatable: a file or dir (.jsonl/.json/.parquet/.csv/.txt), hf:NAME, "
        "hf:NAME:CONFIG@SPLIT, synthetic:arith or dm-math:MODULE[:SPLIT]; SPEC*WEIGHT to mix.",
    )
    steps: int | None = Field(None, ge=1, description="Optimizer steps (or give --tokens).")
    tokens: int | None = Field(None, ge=1, description="Training tokens; steps = ceil(tokens / tokens per step).")
    lr: float | None = Field(None, gt=0, description=f"Peak learning rate (default by method: {_LR_HELP}).")
    warmup: int | None = Field(None, ge=0, description=f"Warm-up steps (default: {WARMUP_FRACTION:.0%} of the steps).")
    schedule: Schedule = Field("cosine", description="Learning-rate schedule; wsd: warm-up, stable, cosine decay.")
    # WSD: the last 20% of steps decay (cosine) to 0; Hägele et al. 2024 found a 20% cool-down
    # matches a cosine schedule of the same length while leaving the stable phase reusable.
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: fraction of the steps spent decaying.")
    batch_size: int = Field(8, ge=1, description="Sequences per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    seq_len: int | None = Field(
        None, ge=2, description=f"Tokens per sequence (default: min({MAX_SEQ_LEN}, the model's max positions))."
    )
    bf16: bool = Field(False, description="bfloat16 autocast (a LoRA base is also held in bfloat16).")
    seed: int = Field(0, description="Seed for LoRA init, data split and order.")
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (0: at start and end only).")
    save_every: int = Field(500, ge=0, description="Resumable checkpoint every N steps (0: at the end only).")
    log_every: int = Field(10, ge=1, description="metrics.jsonl row every N steps.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0: off).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale alpha/r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    targets: list[str] | None = Field(
        None,
        description="LoRA targets: roles (q,k,v,o,gate,up,down,qkv,gate_up) or module names; "
        "comma-separated or repeated (default: every linear role).",
    )
    layers: Selection | None = Field(None, description=f"Layers LoRA adapts (method lora): {SELECTION_FORMS}.")
    text_field: str | None = Field(None, description="Record field holding the text (default: detected).")
    eval_fraction: float = Field(0.05, gt=0, lt=1, description="Share of documents held out for eval.")
    eval_tokens: int | None = Field(
        None,
        ge=1,
        description="A fixed eval set of about this many tokens, the same documents whatever the budget "
        "(compare runs of different lengths on it); default: eval_fraction of what is read.",
    )
    skip_docs: int = Field(
        0,
        ge=0,
        description="With eval_tokens: train from this document of the data stream on (a later stage "
        "continues where an earlier one stopped; progressive sets it).",
    )
    share_duplicates: bool = Field(
        False, description="LoRA on a grown model: copies of one layer share one frozen base tensor."
    )
    carry_optimizer: CarryPolicy | None = Field(
        None, description="full/new after a grow: AdamW moments from the parent stage (reset, copy or scale)."
    )
    optimizer_from: Path | None = Field(
        None, description="The parent stage's OUT/optimizer (default: from MODEL's surgeon.json)."
    )

    @field_validator("method")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in METHODS:
            raise ValueError(unknown_method(name))
        return name

    ramp_new: RampNew | None = Field(
        None,
        description="After a grow: fade the new layers in (Gradual DropIn), their residual branches scaled "
        "from 0 to 1 over N steps; give N (or {steps: N} in --config files and recipes).",
    )

    @field_validator("ramp_new", mode="before")
    @classmethod
    def _ramp_steps(cls, value):
        """`--ramp-new 200` and `ramp_new: 200` mean {steps: 200}."""
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        return {"steps": value} if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, value):
        """`q,k` and repeated names both list targets (the CLI and YAML write either)."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [t.strip() for v in value for t in v.split(",") if t.strip()] or None
        return value

    @field_validator("layers", mode="before")
    @classmethod
    def _selection_text(cls, value):
        """A selection written as text (`0,5,-1`, `{every: 4}`) is parsed as plans write it."""
        return _parse_selection(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> TrainOptions:
        m = self.train_method
        problems = []
        if (self.steps is None) == (self.tokens is None):
            problems.append("give exactly one budget: --steps or --tokens")
        if self.targets is not None and not m.adapter:
            problems.append(f"--targets picks LoRA modules; method {m.name!r} trains whole tensors")
        if self.layers is not None and m.layers != "chosen":
            where = "the new layers from surgeon.json" if m.layers == "new" else "every layer"
            chosen = " or ".join(repr(n) for n, c in METHODS.items() if c.layers == "chosen")
            problems.append(f"--layers is for method {chosen}; method {m.name!r} trains {where}")
        if self.share_duplicates and not m.adapter:
            lora = ", ".join(method_names(adapter=True))
            problems.append(f"--share-duplicates shares frozen base tensors, so it needs a LoRA method ({lora})")
        if self.carry_optimizer not in (None, "reset") and m.adapter:
            whole = " or ".join(method_names(adapter=False))
            problems.append(f"--carry-optimizer copies AdamW moments of whole tensors: use it with method {whole}")
        if self.optimizer_from is not None and self.carry_optimizer is None:
            problems.append("--optimizer-from needs --carry-optimizer")
        if self.skip_docs and self.eval_tokens is None:
            problems.append("--skip-docs needs --eval-tokens (a fixed eval set that skipping cannot move)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def train_method(self) -> TrainMethod:
        return METHODS[self.method]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.train_method.default_lr

    def sequence_length(self, max_positions: int | None) -> int:
        """--seq-len, or the default: MAX_SEQ_LEN capped by the model's positions."""
        return self.seq_len or min(MAX_SEQ_LEN, max_positions or MAX_SEQ_LEN)

    def tokens_per_step(self, seq_len: int, world_size: int = 1) -> int:
        return self.batch_size * self.grad_accum * world_size * seq_len

    def total_steps(self, seq_len: int, world_size: int = 1) -> int:
        """--steps, or the fewest optimizer steps that see --tokens tokens."""
        if self.steps is not None:
            return self.steps
        return math.ceil(self.tokens / self.tokens_per_step(seq_len, world_size))

    def data_tokens(self, seq_len: int, world_size: int = 1) -> int:
        """Tokens to read: one pass of the budget plus the eval share, and slack for the
        partial blocks packing drops. Weights then set the mix; a smaller corpus repeats."""
        train = self.total_steps(seq_len, world_size) * self.tokens_per_step(seq_len, world_size)
        if self.eval_tokens is not None:
            return train + self.eval_tokens + 2 * seq_len
        return math.ceil(train / (1 - self.eval_fraction)) + 2 * seq_len

    def warmup_steps(self, total: int) -> int:
        """--warmup, or WARMUP_FRACTION of the steps by default."""
        return self.warmup if self.warmup is not None else round(WARMUP_FRACTION * total)

    def scheduler(self, total: int) -> tuple[str, dict]:
        """Transformers' lr_scheduler_type and lr_scheduler_kwargs for this schedule."""
        if self.schedule != "wsd":
            return SCHEDULER_NAMES[self.schedule], {}
        decay = max(1, round(self.decay_fraction * total))
        return SCHEDULER_NAMES["wsd"], {"num_decay_steps": decay, "decay_type": "cosine"}


def make_options(**fields) -> TrainOptions:
    """TrainOptions from keyword fields; every problem reported at once as a TrainError."""
    return validate_options(fields)


def validate_options(
    fields: dict, config: Path | None = None, from_config: frozenset[str] = frozenset()
) -> TrainOptions:
    """TrainOptions from fields, every problem reported at once as a TrainError; a problem with a
    field in `from_config` names the --config file and key instead of the flag."""
    try:
        return TrainOptions(**fields)
    except ValidationError as exc:
        problems = [_problem(e, config, from_config) for e in exc.errors()]
        raise TrainError(
            "invalid train-stage options:\n" + "\n".join(f"  - {p}" for p in problems),
            hint="see `surgeon train-stage --help`",
        ) from None


def _problem(error: dict, config: Path | None, from_config: frozenset[str]) -> str:
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        msg = "required: give the flag, or the field in a --config file"
    if not error["loc"]:
        return msg
    key = str(error["loc"][0])
    if key in from_config:
        return f"{config}: {'.'.join(str(p) for p in error['loc'])}: {msg}"
    return f"--{'.'.join(str(p) for p in error['loc']).replace('_', '-')}: {msg}"


def load_options(config: Path | None, flags: dict) -> TrainOptions:
    """TrainOptions from a --config YAML mapping of option fields, the flags given overriding it."""
    from_file = read_config(config) if config is not None else {}
    fields = {**from_file, **flags}
    return validate_options(fields, config, frozenset(from_file) - set(flags))


def read_config(path: Path) -> dict:
    """A --config file: a YAML mapping of train-stage option fields (as recipes' `train:` write them)."""
    fields = ", ".join(TrainOptions.model_fields)
    hint = f"write option fields as YAML, e.g. `method: lora` and `steps: 100`; fields: {fields}"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TrainError(f"--config {path}: cannot read it ({exc.strerror or exc})", hint=hint) from None
    except yaml.YAMLError as exc:
        raise TrainError(f"--config {path}: not valid YAML ({exc})", hint=hint) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainError(f"--config {path}: expected a mapping of option fields, got {type(data).__name__}", hint=hint)
    return data


_SELECTION = TypeAdapter(Selection)


def _parse_selection(text: str) -> Selection:
    """A layer selection as plans write it: `all`, `0,5,-1`, `{from: 8, to: 24}`, `{every: 4}`,
    `{middle: 4}` (YAML flow syntax); ValueError if it is none of these."""
    try:
        value = yaml.safe_load(text)
        if isinstance(value, int):
            value = [value]
        elif isinstance(value, str) and value != "all":
            value = [int(v) for v in value.split(",") if v.strip()]
        return _SELECTION.validate_python(value)
    except (yaml.YAMLError, ValueError, ValidationError):
        raise ValueError(f"{text!r} is not a layer selection; use {SELECTION_FORMS}") from None


def parse_layers(text: str) -> Selection:
    """`_parse_selection` for callers outside option validation: a TrainError on bad text."""
    try:
        return _parse_selection(text)
    except ValueError:
        raise TrainError(f"--layers {text!r} is not a layer selection", hint=f"use {SELECTION_FORMS}") from None
