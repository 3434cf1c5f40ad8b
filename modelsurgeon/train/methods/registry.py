"""The training methods `surgeon train-stage --method` accepts, listed once; the CLI's help,
options validation and FLOP accounting read this table."""

from __future__ import annotations

from modelsurgeon.errors import TrainError
from modelsurgeon.train.methods.base import TrainMethod
from modelsurgeon.train.methods.full import FULL
from modelsurgeon.train.methods.lora import LORA
from modelsurgeon.train.methods.lora_new import LORA_NEW
from modelsurgeon.train.methods.new import NEW

METHODS: dict[str, TrainMethod] = {m.name: m for m in (LORA, FULL, NEW, LORA_NEW)}


def method_names(*, adapter: bool | None = None) -> list[str]:
    """Registered names in table order; adapter=True/False keeps the LoRA / whole-tensor ones."""
    return [n for n, m in METHODS.items() if adapter is None or m.adapter == adapter]


def unknown_method(name: str) -> str:
    return f"unknown method {name!r}; the registered methods are {', '.join(METHODS)}"


def get_method(name: str) -> TrainMethod:
    try:
        return METHODS[name]
    except KeyError:
        hint = "see `surgeon train-stage --help` for what each method trains"
        raise TrainError(unknown_method(name), hint=hint) from None
