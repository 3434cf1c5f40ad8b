"""Method `full`: every tensor of every layer trains in float32 (no adapter). Whole-tensor
training with requires_grad flags is shared with `new`, which freezes all but some layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelsurgeon.train.methods.base import TrainMethod

if TYPE_CHECKING:
    from torch import nn

    from modelsurgeon.arch.spec import ArchSpec
    from modelsurgeon.train.methods.plan import MethodPlan
    from modelsurgeon.train.options import TrainOptions


@dataclass(frozen=True)
class WholeTensorMethod(TrainMethod):
    """Trains whole tensors: the planned layers (or all) get requires_grad, the rest freeze."""

    def attach(self, model: nn.Module, plan: MethodPlan, options: TrainOptions, spec: ArchSpec) -> nn.Module:
        if plan.layers is not None:
            prefixes = tuple(f"{spec.layer_prefix}{i}." for i in plan.layers)
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(prefixes))
        return model


# Full fine-tuning moves pretrained weights, so it takes a step 10x smaller than LoRA's.
FULL = WholeTensorMethod(name="full", summary="every weight of the model trains", default_lr=2e-5, layers="all")
