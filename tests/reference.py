"""An independent reference for grown models: the source model's own layer modules, copied in
the expected order, with forward hooks that multiply each residual branch's output by its
scale. It shares no code with modelsurgeon's weight folding or config rewriting."""

from __future__ import annotations

import copy

import torch
from torch import nn

# The module whose output is added to the residual stream, per branch, in each family's
# transformers implementation (read from the modeling code, not from modelsurgeon's table).
BRANCH_OUTPUTS = {
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen3": ("self_attn.o_proj", "mlp.down_proj"),
    "phi3": ("self_attn.o_proj", "mlp.down_proj"),
    "gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3_text": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "olmo2": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
    "gpt_neox": ("attention.dense", "mlp.dense_4h_to_h"),
}
LAYER_COUNT_KEY = {"gpt2": "n_layer"}


def _layer_owner(model: nn.Module) -> tuple[nn.Module, str]:
    for owner_name, attr in (("model", "layers"), ("transformer", "h"), ("gpt_neox", "layers")):
        owner = getattr(model, owner_name, None)
        if owner is not None and hasattr(owner, attr):
            return owner, attr
    raise AttributeError(f"no decoder layer list in {type(model).__name__}")


def reference_model(source: nn.Module, family: str, sources: list[int], scales: list[float]) -> nn.Module:
    """A model whose layer j is the source's layer sources[j], with x + scales[j] * F(x)."""
    ref = copy.deepcopy(source)
    owner, attr = _layer_owner(ref)
    old = getattr(owner, attr)
    new = nn.ModuleList()
    for src, scale in zip(sources, scales):
        layer = copy.deepcopy(old[src])
        if scale != 1.0:
            for name in BRANCH_OUTPUTS[family]:
                layer.get_submodule(name).register_forward_hook(lambda m, i, o, s=scale: o * s)
        new.append(layer)
    setattr(owner, attr, new)
    cfg = ref.config
    setattr(cfg, LAYER_COUNT_KEY.get(family, "num_hidden_layers"), len(sources))
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [source.config.layer_types[s] for s in sources]
    return ref.eval()


@torch.no_grad()
def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


def prompt_ids(vocab: int, n: int = 40, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Longer than the tiny models' sliding window (16), so per-layer attention kinds matter."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, n), generator=g)
