"""Training-FLOP accounting for a stage, computed from tensor shapes before anything trains.

Per training token (forward + backward), following Kaplan et al. 2020 / Hoffmann et al. 2022:

    full training    6 * N                     2N forward, 2N backward to activations, 2N weight gradients
    frozen base      4 * N_frozen              forward and backward to activations, no weight gradients
    LoRA adapters    6 * r * (d_in + d_out)    per adapted linear: A and B are small trainable matmuls
    attention        12 * L * S * d_attn       QK^T and scores@V: 2*S*d_attn each per layer forward,
                                               times 3 for forward + backward (no causal halving)

so a LoRA stage costs (4 * N_total + 2 * N_trainable) * T with N_total including the adapters.
N counts the weights of matrix multiplications only: every decoder layer's linear weights and the
output head. The input embedding is a lookup, not a matmul, and is excluded; with tied embeddings
the same matrix is counted once, as the head. Norm gains and biases are elementwise and excluded.
For methods that freeze some layers (new), the frozen layers are charged 4N: autograd may skip the
activation backward below the lowest trainable layer, so this is an upper bound there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelsurgeon.arch.spec import LINEAR_ROLES, ArchSpec, Layout
from modelsurgeon.train.methods import get_method  # LoRA adapts the matmuls we count


@dataclass(frozen=True)
class ArchCounts:
    """Parameter counts of one model that the FLOP formula needs (all in scalars)."""

    n_layers: int
    layer_matmul: int  # linear weights of one decoder layer (layers of a depth-grown model are alike)
    head_matmul: int  # output head: vocab x hidden (the embedding matrix when tied)
    attn_dim: int  # query heads x head_dim: the width of QK^T and scores@V
    linears: tuple[tuple[str, int, int], ...]  # (module suffix, d_in, d_out) of one layer's linears
    layer_params: int  # every parameter of one layer (norms and biases too), for the report
    other_params: int  # everything outside the layers: embedding, final norm, untied head

    @property
    def matmul(self) -> int:
        return self.n_layers * self.layer_matmul + self.head_matmul

    @property
    def total(self) -> int:
        return self.n_layers * self.layer_params + self.other_params

    def with_layers(self, n_layers: int) -> ArchCounts:
        """The counts after depth growth to `n_layers` layers of the same shape."""
        return replace(self, n_layers=n_layers)


def arch_counts(spec: ArchSpec, layout: Layout, shapes: dict[str, tuple[int, ...]], config: dict) -> ArchCounts:
    """Counts from tensor shapes (checkpoint headers, or a model built on the meta device)."""
    layer0 = layout.layers[0] if layout.layers else {}
    linears = []
    for suffix, name in sorted(layer0.items()):
        shape = shapes[name]
        if suffix.endswith(".weight") and len(shape) == 2 and spec.role_of(suffix) in LINEAR_ROLES:
            d_out, d_in = (shape[1], shape[0]) if spec.transposed_linears else shape
            linears.append((suffix.rsplit(".", 1)[0], d_in, d_out))
    head = next((n for n in layout.others if spec.globals.get(n.rsplit(".", 1)[0]) == "lm_head"), None)
    embed = next((n for n in layout.others if spec.globals.get(n.rsplit(".", 1)[0]) == "embed"), None)
    head_shape = shapes[head] if head else shapes[embed] if embed else (0, 0)
    layer_params = sum(_numel(shapes[n]) for n in layer0.values())
    return ArchCounts(
        n_layers=layout.num_layers,
        layer_matmul=sum(i * o for _, i, o in linears),
        head_matmul=_numel(head_shape),
        attn_dim=_attn_dim(spec, linears, config),
        linears=tuple(linears),
        layer_params=layer_params,
        other_params=sum(_numel(shapes[n]) for n in layout.others),
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _attn_dim(spec: ArchSpec, linears: list[tuple[str, int, int]], config: dict) -> int:
    for module, _, d_out in linears:
        role = spec.modules.get(module)
        if role == "q":
            return d_out
        if role == "qkv":  # fused q|k|v: without GQA, a third of the output is the query
            heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
            if heads and kv:
                return d_out * heads // (heads + 2 * kv)
            return d_out // 3
    return int(config.get("hidden_size") or config.get("n_embd") or 0)


@dataclass(frozen=True)
class StageFlops:
    """FLOPs of one training stage, with the per-token parts that make it up."""

    tokens: int
    per_token_dense: int  # weight matmuls (6N, or 4N_total + 2N_trainable for LoRA)
    per_token_attention: int  # 12 * L * S * d_attn
    trainable_matmul: int
    lora_params: int

    @property
    def per_token(self) -> int:
        return self.per_token_dense + self.per_token_attention

    @property
    def total(self) -> int:
        return self.per_token * self.tokens


def lora_params(counts: ArchCounts, r: int, targets: list[str] | None, n_adapted_layers: int) -> int:
    """Adapter parameters: r * (d_in + d_out) per adapted linear per adapted layer."""
    chosen = [(i, o) for m, i, o in counts.linears if targets is None or m in targets]
    return n_adapted_layers * sum(r * (i + o) for i, o in chosen)


def stage_flops(
    counts: ArchCounts,
    tokens: int,
    seq_len: int,
    method: str,
    *,
    lora_r: int = 0,
    lora_targets: list[str] | None = None,
    trained_layers: int | None = None,
) -> StageFlops:
    """Training FLOPs of `tokens` tokens at sequence length `seq_len` (see the module docstring).

    `trained_layers`: how many layers train (method new / lora on a layer subset); None = all."""
    layers = counts.n_layers if trained_layers is None else trained_layers
    attention = 12 * counts.n_layers * seq_len * counts.attn_dim
    m = get_method(method)
    if m.adapter:
        adapters = lora_params(counts, lora_r, lora_targets, layers)
        dense = 4 * (counts.matmul + adapters) + 2 * adapters
        return StageFlops(tokens, dense, attention, adapters, adapters)
    trainable = counts.matmul if m.layers == "all" else layers * counts.layer_matmul
    dense = 4 * counts.matmul + 2 * trainable
    return StageFlops(tokens, dense, attention, trainable, 0)
