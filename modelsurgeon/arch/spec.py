"""The architecture table's schema: which tensors a layer has, their roles, and the residual
branches, loaded from `specs/<family>.yaml`. Nothing else in the package hard-codes tensor names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

# How a branch scale s folds into the tensor that carries the branch output:
#   multiply:    y = W x + b          -> W' = sW, b' = sb
#   gain:        y = w * n(x) (+ b)   -> w' = sw, b' = sb
#   offset_gain: y = (1 + w) * n(x)   -> w' = s(1 + w) - 1   (Gemma stores gains as offsets)
Fold = Literal["multiply", "gain", "offset_gain"]
Residual = Literal["pre_norm", "sandwich_norm", "post_norm", "parallel"]
# Roles of the table's linear modules (matmuls): what LoRA adapts, GPT-2's Conv1D transposes,
# and FLOPs count; norms and embeddings are not among them.
LINEAR_ROLES = ("q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down")


class Branch(BaseModel):
    """The module whose output is one residual branch's contribution to the stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    module: str  # may hold `*` for an expert index: every expert's down projection carries the branch
    fold: Fold
    # The in-memory module whose output is the branch, where it differs from the file's names
    # (transformers 5 fuses experts, and calls Mixtral's block_sparse_moe `mlp`).
    hook: str | None = None

    def matches(self, module: str) -> bool:
        if "*" not in self.module:
            return module == self.module
        return re.fullmatch(re.escape(self.module).replace(r"\*", r"\d+"), module) is not None


class ConfigKeys(BaseModel):
    """config.json keys of the width dimensions; None where the family derives the value
    (e.g. head_dim = hidden / heads in GPT-2), which constrains how width may grow."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden: str = "hidden_size"
    ffn: str = "intermediate_size"
    heads: str = "num_attention_heads"
    kv_heads: str | None = "num_key_value_heads"
    head_dim: str | None = "head_dim"


class LayerKey(BaseModel):
    """A scalar config key that encodes which layers are `marked` (e.g. use sliding attention),
    for readers that ignore the per-layer `list` (vLLM, older transformers, llama.cpp).
    full_prefix: layers i >= value are marked (Qwen's max_window_layers); period: every value-th
    layer is unmarked, the rest marked (Gemma's sliding_window_pattern). `key: null`: readers
    hard-code `default` (Gemma 2 alternates), so nothing can be set, only warned about."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str | None
    pattern: Literal["full_prefix", "period"]
    list: str = "layer_types"
    marked: str = "sliding_attention"
    enabled_by: str | None = None  # a boolean key that switches the pattern on (Qwen's use_sliding_window)
    default: int | None = None  # what readers assume when the key is absent


class MoeSpec(BaseModel):
    """Where a mixture-of-experts family keeps its experts, router and MoE config keys. Expert
    tensors are stored one file key per expert (`{experts}.<e>.<module>`), which is what
    transformers 5 writes and reads back into its fused 3D tensors, and what vLLM loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    experts: str  # module prefix of the experts: expert e is `{experts}.{e}.`
    expert_modules: dict[str, str]  # module inside one expert -> role (gate, up, down)
    router: str  # module of the router linear: (experts, hidden)
    shared: dict[str, str] = {}  # shared expert's modules -> role (gate, up, down)
    shared_router: str | None = None  # sigmoid gate of the shared expert: (1, hidden)
    num_experts_key: str
    num_experts_alias: str | None = None  # the other name transformers' attribute_map accepts
    top_k_key: str = "num_experts_per_tok"
    expert_ffn_key: str  # config key of one expert's FFN width
    shared_ffn_key: str | None = None
    norm_topk_key: str | None = None  # None: the family always renormalises the top-k weights
    dense_layers_key: str | None = None  # list of layer indices that keep a dense FFN
    sparse_step_key: str | None = None  # every n-th layer is sparse (Qwen MoE)
    upcycles: list[str] = []  # dense families whose layers match this family's, FFN aside
    drop_config: list[str] = []  # dense-family config keys this family does not have
    refuse_if: list[str] = []  # dense-family options this family cannot express (set: no upcycle)
    set_config: dict[str, object] = {}  # values an upcycled config must take

    def experts_key(self, config: dict) -> str:
        """The key config.json uses for the expert count (saved configs differ from hub ones)."""
        alias = self.num_experts_alias
        return alias if alias and alias in config and self.num_experts_key not in config else self.num_experts_key

    def expert_module(self, e: int, module: str) -> str:
        return f"{self.experts}.{e}.{module}"

    def expert_role(self, module: str) -> tuple[int, str] | None:
        """(expert index, role) of a module path inside an expert, else None."""
        m = re.fullmatch(re.escape(self.experts) + r"\.(\d+)\.(.+)", module)
        if m is None or m.group(2) not in self.expert_modules:
            return None
        return int(m.group(1)), self.expert_modules[m.group(2)]


class ArchSpec(BaseModel):
    """One model family. `known=False` marks a spec detected from tensor names alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model_type: str
    architectures: list[str] = []
    num_layers_key: str
    layer_prefix: str
    residual: Residual | None = None
    modules: dict[str, str] = {}
    globals: dict[str, str] = {}
    branches: dict[str, Branch] = {}
    layer_lists: list[str] = []
    position_flags: list[str] = []
    layer_keys: list[LayerKey] = []
    transposed_linears: bool = False
    tie_key: str = "tie_word_embeddings"
    config_keys: ConfigKeys = ConfigKeys()
    qkv_layout: Literal["blocks", "per_head"] = "blocks"  # fused q|k|v, or per head [q k v]
    qk_norm: Literal["per_head", "full"] = "per_head"  # q/k norms over head_dim, or over all heads
    norm_fold: Fold = "gain"  # how a scale folds into this family's norm gains
    embed_scale: Literal["none", "sqrt_hidden"] = "none"  # Gemma multiplies embeddings by sqrt(hidden)
    moe: MoeSpec | None = None
    known: bool = True
    # A vision-language wrapper (arch/vlm.yaml) around this text family: its model_type, and the
    # role of non-layer tensors outside `globals` (the vision tower: byte-copied by every op).
    wrapper: str | None = None
    other_role: str | None = None

    def layer_tensor(self, index: int, suffix: str) -> str:
        return f"{self.layer_prefix}{index}.{suffix}"

    def branch_tensors(self, suffixes: set[str]) -> dict[str, tuple[str, Fold]]:
        """Map each present per-layer tensor suffix that carries a branch output to (branch, fold)."""
        out: dict[str, tuple[str, Fold]] = {}
        for name, br in self.branches.items():
            for suffix in suffixes:
                module, kind = suffix.rsplit(".", 1)
                if kind in ("weight", "bias") and br.matches(module):
                    out[suffix] = (name, br.fold)
        return out

    def global_role(self, name: str) -> str | None:
        """The role of a non-layer tensor: by its module (or its own name, for a bare parameter)."""
        module = name.rsplit(".", 1)[0]
        return self.globals.get(module) or self.globals.get(name) or self.other_role

    def role_of(self, suffix: str) -> str | None:
        module = suffix.rsplit(".", 1)[0]
        role = self.modules.get(module)
        if role is None and self.moe is not None:
            found = self.moe.expert_role(module)
            role = f"expert_{found[1]}" if found else None
        return role


@dataclass(frozen=True)
class Layout:
    """Where a checkpoint's tensors sit: per-layer tensors by suffix, and everything else."""

    layers: list[dict[str, str]]  # layers[i][suffix] = full tensor name
    others: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def split_layers(names: list[str], prefix: str) -> tuple[dict[int, dict[str, str]], list[str]]:
    """Group tensor names under `prefix<i>.` by layer index; return (by_index, others)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.+)$")
    by_index: dict[int, dict[str, str]] = {}
    others: list[str] = []
    for name in names:
        m = pattern.match(name)
        if m:
            by_index.setdefault(int(m.group(1)), {})[m.group(2)] = name
        else:
            others.append(name)
    return by_index, others
