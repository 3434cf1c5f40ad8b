"""The layer map run as a program on SOURCE's own modules: grown layer j is source layer s with
its residual branches multiplied by the map's scale (x + k * F(x)), as forward hooks on the
modules the architecture table names as branch outputs. No weight is copied or folded.

This is what a grown checkpoint must compute for ANY class: for `exact` it equals SOURCE, for
`approx` and `none` it differs from SOURCE by design, yet the grown checkpoint must still equal
this program to rounding. That turns "the model moved" (expected) into "the surgery did what
the map says" (checkable), so approx growth gets a tight gate instead of only loose drift bounds.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from modelsurgeon.verify.claims import Structure
from modelsurgeon.verify.runner import layer_outputs, layers_path

LAYER_COUNT_ATTRS = ("num_hidden_layers", "n_layer", "num_layers")


class _Scaled(nn.Module):
    """Source layer `layer` with its branches scaled by `scale` while it runs. Attributes the
    model's forward reads from its layers (attention_type, layer_idx, ...) pass through."""

    def __init__(self, layer: nn.Module, scale: float, current: list[float]) -> None:
        super().__init__()
        self.layer, self.scale, self.current = layer, scale, current

    def forward(self, *args, **kwargs):
        self.current.append(self.scale)
        try:
            return self.layer(*args, **kwargs)
        finally:
            self.current.pop()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)


def branch_modules(structure: Structure) -> list[str]:
    """Module paths inside one decoder layer whose outputs are residual branches."""
    return list(dict.fromkeys(b.hook or b.module for b in structure.spec.branches.values()))


def can_run(structure: Structure, model: nn.Module) -> str:
    """Why the program cannot run on `model` ('' when it can)."""
    if not structure.spec.branches:
        return f"the architecture table has no residual branches for {structure.spec.model_type}"
    layer = model.get_submodule(layers_path(model, structure))[0]
    missing = [m for m in branch_modules(structure) if not _has(layer, m)]
    return f"decoder layers have no module {missing}" if missing else ""


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


@contextmanager
def as_program(model: nn.Module, structure: Structure, layer_map: list[tuple[int, float]]):
    """Turn SOURCE's loaded model into the layer-map program for the duration of the block."""
    owner_path, _, attr = layers_path(model, structure).rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    layers = getattr(owner, attr)
    current: list[float] = []

    def scale_output(module, inputs, output):
        s = current[-1] if current else 1.0
        return output if s == 1.0 else output * s

    hooks = []
    for layer in layers:
        hooks += [layer.get_submodule(m).register_forward_hook(scale_output) for m in branch_modules(structure)]
    config = model.config.get_text_config()  # a vision-language model's text tower reads its text_config
    saved = dict(config.__dict__)
    setattr(owner, attr, nn.ModuleList(_Scaled(layers[s], k, current) for s, k in layer_map))
    for key in LAYER_COUNT_ATTRS:
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, len(layer_map))
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [saved["layer_types"][s] for s, _ in layer_map]
    try:
        yield model
    finally:
        setattr(owner, attr, layers)
        config.__dict__.update(saved)
        for h in hooks:
            h.remove()


@torch.no_grad()
def run_program(
    model: nn.Module,
    structure: Structure,
    layer_map: list[tuple[int, float]],
    prompts: list[list[int]],
    device: torch.device,
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Logits [T, vocab] and hidden states (embeddings, then every program layer's output) per prompt."""

    logits, hidden = [], []
    with as_program(model, structure, layer_map):
        for ids in prompts:
            sink: list[torch.Tensor] = []
            with layer_outputs(model, structure, sink):
                out = model(input_ids=torch.tensor([ids], device=device), use_cache=False)
            logits.append(out.logits[0].float().cpu())
            hidden.append(sink)
    return logits, hidden
