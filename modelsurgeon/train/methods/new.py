"""Method `new` (LLaMA Pro's block expansion): only the layers the last growth added train,
whole tensors in float32; every other tensor stays bit-identical."""

from __future__ import annotations

from modelsurgeon.train.methods.full import WholeTensorMethod

# Whole new blocks start near identity and sit between LoRA (2e-4) and full training (2e-5).
NEW = WholeTensorMethod(
    name="new", summary="only the layers the last `surgeon grow` added train", default_lr=1e-4, layers="new"
)
