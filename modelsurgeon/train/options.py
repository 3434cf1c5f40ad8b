"""Options of one training stage, validated at the boundary (the CLI and `surgeon progressive`
recipes build the same frozen model), and the budget and schedule arithmetic derived from them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from modelsurgeon.errors import TrainError
from modelsurgeon.plan.schema import Selection

Method = Literal["lora", "full", "new", "lora-new"]
Schedule = Literal["cosine", "linear", "constant", "wsd"]
CarryPolicy = Literal["reset", "copy", "scale"]
LORA_METHODS = ("lora", "lora-new")

# Defaults by method: LoRA adapters start at zero and tolerate a large step (the peft/QLoRA
# norm); whole new blocks (LLaMA Pro) sit between; full fine-tuning moves pretrained weights.
DEFAULT_LR = {"lora": 2e-4, "lora-new": 2e-4, "new": 1e-4, "full": 2e-5}
# Transformers' scheduler names for ours; WSD is "warmup_stable_decay".
SCHEDULER_NAMES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup", "wsd": "warmup_stable_decay"}


class RampNew(BaseModel):
    """`ramp_new`: Gradual DropIn of the layers the last growth added (see train/ramp.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(ge=1)  # the new layers' branch scale rises linearly from 0 to 1 over these steps


class TrainOptions(BaseModel):
    """Everything `surgeon train-stage` can be told, with its defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "lora"
    data: list[str] = Field(min_length=1)
    steps: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    warmup: int | None = Field(None, ge=0)
    schedule: Schedule = "cosine"
    # WSD: the last 20% of steps decay (cosine) to 0; Hägele et al. 2024 found a 20% cool-down
    # matches a cosine schedule of the same length while leaving the stable phase reusable.
    decay_fraction: float = Field(0.2, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    seq_len: int | None = Field(None, ge=2)
    bf16: bool = False
    seed: int = 0
    eval_every: int = Field(0, ge=0)
    save_every: int = Field(500, ge=0)
    log_every: int = Field(10, ge=1)
    max_grad_norm: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    lora_r: int = Field(16, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    targets: list[str] | None = None
    layers: Selection | None = None
    text_field: str | None = None
    eval_fraction: float = Field(0.05, gt=0, lt=1)
    share_duplicates: bool = False
    carry_optimizer: CarryPolicy | None = None
    optimizer_from: Path | None = None
    ramp_new: RampNew | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrainOptions:
        problems = []
        if (self.steps is None) == (self.tokens is None):
            problems.append("give exactly one budget: --steps or --tokens")
        lora = self.method in LORA_METHODS
        if self.targets is not None and not lora:
            problems.append(f"--targets picks LoRA modules; method {self.method!r} trains whole tensors")
        if self.layers is not None and self.method != "lora":
            where = "the new layers from surgeon.json" if self.method.endswith("new") else "every layer"
            problems.append(f"--layers is for method 'lora'; method {self.method!r} trains {where}")
        if self.share_duplicates and not lora:
            problems.append("--share-duplicates shares frozen base tensors, so it needs a LoRA method (lora, lora-new)")
        if self.carry_optimizer not in (None, "reset") and lora:
            problems.append("--carry-optimizer copies AdamW moments of whole tensors: use it with method full or new")
        if self.optimizer_from is not None and self.carry_optimizer is None:
            problems.append("--optimizer-from needs --carry-optimizer")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def is_lora(self) -> bool:
        return self.method in LORA_METHODS

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
        return math.ceil(train / (1 - self.eval_fraction)) + 2 * seq_len

    def warmup_steps(self, total: int) -> int:
        """--warmup, or 5% of the steps by default."""
        return self.warmup if self.warmup is not None else round(0.05 * total)

    def scheduler(self, total: int) -> tuple[str, dict]:
        """Transformers' lr_scheduler_type and lr_scheduler_kwargs for this schedule."""
        if self.schedule != "wsd":
            return SCHEDULER_NAMES[self.schedule], {}
        decay = max(1, round(self.decay_fraction * total))
        return SCHEDULER_NAMES["wsd"], {"num_decay_steps": decay, "decay_type": "cosine"}


def make_options(**fields) -> TrainOptions:
    """TrainOptions from keyword fields; every problem reported at once as a TrainError."""
    try:
        return TrainOptions(**fields)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{('--' + where.replace('_', '-') + ': ') if where else ''}{msg}")
        raise TrainError("invalid train-stage options:\n" + "\n".join(f"  - {p}" for p in problems),
                         hint="see `surgeon train-stage --help`") from None  # fmt: skip


_SELECTION = TypeAdapter(Selection)


def parse_layers(text: str) -> Selection:
    """A layer selection as plans write it: `all`, `0,5,-1`, `{from: 8, to: 24}`, `{every: 4}`,
    `{middle: 4}` (YAML flow syntax)."""
    try:
        value = yaml.safe_load(text)
        if isinstance(value, int):
            value = [value]
        elif isinstance(value, str) and value != "all":
            value = [int(v) for v in value.split(",") if v.strip()]
        return _SELECTION.validate_python(value)
    except (yaml.YAMLError, ValueError, ValidationError):
        raise TrainError(
            f"--layers {text!r} is not a layer selection",
            hint="use all, 0,5,-1, '{from: 8, to: 24}', '{every: 4}' or '{middle: 4}' (as in plans)",
        ) from None
