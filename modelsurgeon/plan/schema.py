"""The plan format, version 1 (see docs/plan-format.md): frozen pydantic models, unknown keys
rejected, steps discriminated by `op`."""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Range(_Strict):
    """Layers from..to-1 (`to` exclusive, as in Python)."""

    start: int = Field(alias="from")
    stop: int = Field(alias="to")


class Every(_Strict):
    """The last layer of each group of n: n-1, 2n-1, ..."""

    every: int = Field(ge=1)


class Middle(_Strict):
    """The n layers centred in the stack (MIDAS)."""

    middle: int = Field(ge=1)


Selection = Literal["all"] | list[int] | Range | Every | Middle
BranchScale = Literal["split", "sqrt"] | float
NewInit = Literal["copy", "zero"]


def _check_scale(value: BranchScale) -> BranchScale:
    if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"branch_scale must be a finite number >= 0, 'split' or 'sqrt', got {value}")
    return value


class _Duplicate(_Strict):
    factor: int = Field(ge=2)
    layers: Selection = "all"
    new: NewInit = "copy"
    branch_scale: BranchScale = 1.0

    _scale = field_validator("branch_scale")(_check_scale)


class Interpolate(_Duplicate):
    """Each selected layer becomes `factor` consecutive layers (copies right after it)."""

    op: Literal["interpolate"]


class Stack(_Duplicate):
    """A contiguous block is repeated `factor` times (copies right after it)."""

    op: Literal["stack"]


class Splice(_Strict):
    """SOLAR depth up-scaling: layers [0, L-trim) followed by [trim, L)."""

    op: Literal["splice"]
    trim: int | str

    @field_validator("trim")
    @classmethod
    def _trim(cls, value: int | str) -> int | str:
        if isinstance(value, str):
            if not value.endswith("%"):
                raise ValueError(f"trim must be an int or a percent string like '25%', got {value!r}")
            try:
                pct = float(value[:-1])
            except ValueError:
                raise ValueError(f"trim percent {value!r} is not a number") from None
            if not 0 < pct < 100:
                raise ValueError(f"trim percent must be between 0% and 100% (exclusive), got {value}")
        elif value < 1:
            raise ValueError(f"trim must be >= 1, got {value}")
        return value


class MapEntry(_Strict):
    """One output layer of an explicit map: a source layer, its branch scale and init; with
    `model`, a layer of that other checkpoint (multi-model splice) instead of the step's input."""

    layer: int
    scale: float = 1.0
    new: NewInit = "copy"
    model: str | None = Field(default=None, min_length=1)

    _scale = field_validator("scale")(_check_scale)


class ModelRange(_Strict):
    """Layers from..to-1 of another checkpoint (`model`: its directory), copied as they are."""

    model: str = Field(min_length=1)
    start: int = Field(alias="from")
    stop: int = Field(alias="to")


class LayerMapStep(_Strict):
    """An explicit output layer list."""

    op: Literal["layers"]
    map: list[int | Range | ModelRange | MapEntry] = Field(min_length=1)

    @property
    def models(self) -> list[str]:
        """The other checkpoints the map names, in order of first mention."""
        return list(dict.fromkeys(e.model for e in self.map if isinstance(e, (ModelRange, MapEntry)) and e.model))


class Drop(_Strict):
    """Remove the selected layers."""

    op: Literal["drop"]
    layers: Selection


class NoiseSpec(_Strict):
    """Symmetry-breaking noise on replicated input splits, cancelling between replicas: either
    relative (`snr_db`: signal-to-noise ratio against each weight's RMS) or absolute (`std`)."""

    snr_db: float | None = None
    std: float | None = Field(default=None, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _one(self) -> NoiseSpec:
        if (self.snr_db is None) == (self.std is None):
            raise ValueError("give exactly one of snr_db or std")
        return self


SIZE = re.compile(r"^(\d+(?:\.\d+)?)x$")


def widen_target(value: int | str, current: int) -> int:
    """A widen size (hidden, ffn) as a dimension.

    '2x' -> 2 * current; '1.5x' -> round(1.5 * current); an int is itself.
    """
    if isinstance(value, int):
        return value
    return round(float(SIZE.match(value).group(1)) * current)


def _check_size(value: int | str | None) -> int | str | None:
    if value is None:
        return value
    if isinstance(value, str):
        m = SIZE.match(value)
        if not m:
            raise ValueError(f"expected '<n>x' (e.g. '2x') or a target size, got {value!r}")
        if float(m.group(1)) < 1:
            raise ValueError(f"a widen factor must be >= 1 (widen never shrinks), got {value}")
    elif value < 1:
        raise ValueError(f"a target size must be >= 1, got {value}")
    return value


class Widen(_Strict):
    """Grow width, function-preserving: hidden (tile), ffn (Net2WiderNet), heads (copy heads)."""

    op: Literal["widen"]
    hidden: int | str | None = None
    ffn: int | str | None = None
    heads: str | None = None
    noise: NoiseSpec | None = None

    _sizes = field_validator("hidden", "ffn", "heads")(_check_size)

    @field_validator("heads")
    @classmethod
    def _heads(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+x", value):
            raise ValueError(f"heads takes an integer multiple like '2x' (copies of whole heads), got {value!r}")
        return value

    @model_validator(mode="after")
    def _something(self) -> Widen:
        if self.hidden is None and self.ffn is None and self.heads is None:
            raise ValueError("widen needs at least one of hidden, ffn, heads")
        return self


# Growing into experts: `upcycle` (dense FFN -> mixture of experts) and `experts` (more experts).


class RouterInit(_Strict):
    """How the new router (one row per expert) starts. Identical experts with renormalised
    top-k weights compute the dense FFN for any router, so this only matters once experts differ."""

    init: Literal["zero", "normal", "orthogonal"] = "zero"
    std: float = Field(default=0.02, gt=0)  # for init: normal
    seed: int = 0


class DropSpec(_Strict):
    """Drop-Upcycling (Nakamura et al. 2025): re-initialise this share of each expert's FFN
    units (rows of gate/up, columns of down) from the original weights' mean and std."""

    fraction: float = Field(gt=0, le=1)
    seed: int = 0


class ExpertNoise(_Strict):
    """Per-expert Gaussian noise on every expert weight (symmetry breaking); std 0 is a no-op."""

    std: float = Field(ge=0)
    seed: int = 0


class Upcycle(_Strict):
    """Turn the selected dense FFNs into `experts` copies behind a top-`top_k` router."""

    op: Literal["upcycle"]
    experts: int = Field(ge=2)
    top_k: int = Field(ge=1)
    layers: Selection = "all"
    router: RouterInit = RouterInit()
    drop: DropSpec | None = None
    noise: ExpertNoise | None = None

    @model_validator(mode="after")
    def _k(self) -> Upcycle:
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= experts ({self.experts})")
        return self

    @property
    def perturbed(self) -> bool:
        return self.drop is not None or (self.noise is not None and self.noise.std > 0)


class Experts(_Strict):
    """Copy every expert (and its router row) `factor` times; top-k grows by the factor too
    (exact) unless keep_top_k (not exact: the copies of one expert crowd the top-k)."""

    op: Literal["experts"]
    factor: int = Field(ge=2)
    keep_top_k: bool = False


Step = Annotated[
    Interpolate | Stack | Splice | LayerMapStep | Drop | Widen | Upcycle | Experts, Field(discriminator="op")
]
OPS = ("interpolate", "stack", "splice", "layers", "drop", "widen", "upcycle", "experts")


class Plan(_Strict):
    """A named, ordered list of growth steps; each step sees the previous step's result.
    Non-layer tensors come from MODEL, except the input embeddings (`embeddings_from`) and the
    final norm and output head (`head_from`) when the plan names another checkpoint for them."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    embeddings_from: str | None = Field(default=None, min_length=1)
    head_from: str | None = Field(default=None, min_length=1)
    steps: list[Step] = Field(min_length=1)

    @property
    def models(self) -> list[str]:
        """Every other checkpoint the plan names (layers, embeddings, head), in order of first mention."""
        named = [m for s in self.steps if isinstance(s, LayerMapStep) for m in s.models]
        return list(dict.fromkeys(named + [m for m in (self.embeddings_from, self.head_from) if m]))
