"""Method `lora`: peft LoRA adapters on the family's linear roles (or --targets), on every layer
or the --layers selection; the frozen base may be held in bfloat16. OUT gets the merged weights
and the adapter itself (OUT/adapter)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from modelsurgeon.train.methods.base import TrainMethod

if TYPE_CHECKING:
    from torch import nn

    from modelsurgeon.arch.spec import ArchSpec
    from modelsurgeon.train.methods.plan import MethodPlan
    from modelsurgeon.train.options import TrainOptions


def lora_config(plan: MethodPlan, options: TrainOptions, spec: ArchSpec):
    from peft import LoraConfig

    # layers_pattern is the name before the layer index ("layers" in model.layers.3., "h" in GPT-2)
    pattern = spec.layer_prefix.rstrip(".").rsplit(".", 1)[-1]
    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=plan.targets,
        layers_to_transform=plan.layers,
        layers_pattern=pattern if plan.layers is not None else None,
        fan_in_fan_out=plan.fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
    )


@dataclass(frozen=True)
class LoraMethod(TrainMethod):
    """Trains low-rank adapters on a frozen base; the adapters are merged into OUT's weights."""

    adapter: ClassVar[bool] = True
    optimizer_naming: ClassVar[str] = "peft"

    def base_dtype(self, bf16: bool) -> str:
        # The base is frozen, so bfloat16 costs no update precision and halves its memory.
        return "bfloat16" if bf16 else "float32"

    def attach(self, model: nn.Module, plan: MethodPlan, options: TrainOptions, spec: ArchSpec) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, lora_config(plan, options, spec))

    def trained_model(self, net: nn.Module) -> nn.Module:
        return net.get_base_model()

    def save_extras(self, net: nn.Module, directory: Path) -> None:
        net.save_pretrained(directory / "adapter")


# LoRA adapters start at zero and tolerate a large step (the peft/QLoRA norm).
LORA = LoraMethod(
    name="lora",
    summary="LoRA adapters on every linear role (or --targets) of every layer (or --layers)",
    default_lr=2e-4,
    layers="chosen",
)
