"""Method `lora-new`: LoRA adapters, only on the layers the last growth added."""

from __future__ import annotations

from modelsurgeon.train.methods.lora import LoraMethod

LORA_NEW = LoraMethod(
    name="lora-new",
    summary="LoRA adapters only on the layers the last `surgeon grow` added",
    default_lr=2e-4,
    layers="new",
)
