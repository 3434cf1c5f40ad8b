"""Width growth (`op: widen`), function-preserving by construction:

- hidden d -> n*d: the residual stream is tiled [x, x, ...]. Embeddings and norm gains are tiled
  (RMS, mean and variance of a tiled vector equal the original's, so norms are exact); every
  linear input over the stream is split (tiled and divided by n); every output to it is tiled.
  A target that is not a multiple replicates units unevenly (bert2BERT): norms then see other
  statistics, so such a step is approximate.
- ffn F -> F' (any F' >= F): new units copy existing ones (Net2WiderNet); the down projection's
  inputs are divided by each unit's replica count. Exact.
- heads x m: query and key/value heads are both copied m times, head_dim kept, so RoPE and the
  1/sqrt(head_dim) scale are untouched and query head c*H+h still reads kv head c*K+h//(H/K).
  o_proj's inputs are divided by m. Exact.
- noise: on every split input, noise whose replicas of one source sum to zero, so the output is
  unchanged while replicas stop receiving identical gradients (HyperCloning's +N/-N twins)."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import torch

from modelsurgeon.arch.spec import LINEAR_ROLES, ArchSpec
from modelsurgeon.ops import axismap as am
from modelsurgeon.ops.axismap import AxisMap
from modelsurgeon.ops.fold import apply_folds
from modelsurgeon.ops.layermap import Equivalence
from modelsurgeon.plan.schema import NoiseSpec, Widen, widen_target

# role -> (axis of dim 0 / the output units, axis of dim 1 / the input units, input is a split)
# hand-laid table: related roles share a row (fmt: skip below)
ROLE_AXES: dict[str, tuple[str | None, str | None, bool]] = {
    "embed": (None, "hidden", False), "pos_embed": (None, "hidden", False), "lm_head": (None, "hidden", True),
    "q": ("q", "hidden", True), "k": ("kv", "hidden", True), "v": ("kv", "hidden", True),
    "qkv": ("qkv", "hidden", True), "o": ("hidden", "q", True),
    "gate": ("ffn", "hidden", True), "up": ("ffn", "hidden", True), "gate_up": ("gate_up", "hidden", True),
    "down": ("hidden", "ffn", True),
    "attn_norm": ("hidden", None, False), "mlp_norm": ("hidden", None, False), "final_norm": ("hidden", None, False),
    "post_attn_norm": ("hidden", None, False), "post_mlp_norm": ("hidden", None, False),
    # Vision-language wrappers: the vision tower is untouched; projector outputs are text hidden units.
    "vision": (None, None, False), "proj_out": ("hidden", None, False), "proj_out_t": ("hidden", None, False),
    "proj_mid": ("hidden", "hidden", True),
}  # fmt: skip


@dataclass(frozen=True)
class Dims:
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class WidthPlan:
    """The composition of all widen steps: element-level maps per axis, source -> output."""

    src: Dims
    dst: Dims
    axes: dict[str, AxisMap]
    noise: NoiseSpec | None

    @property
    def hidden_ratio(self) -> float:
        return self.dst.hidden / self.src.hidden


def model_dims(spec: ArchSpec, config: dict, ffn_from_tensors: int) -> Dims:
    keys = spec.config_keys
    hidden, heads = config[keys.hidden], config[keys.heads]
    kv = (config.get(keys.kv_heads) if keys.kv_heads else None) or heads
    head_dim = (config.get(keys.head_dim) if keys.head_dim else None) or hidden // heads
    return Dims(hidden, ffn_from_tensors, heads, kv, head_dim)


def _element_maps(spec: ArchSpec, d: Dims, new: Dims) -> dict[str, AxisMap]:
    hd = d.head_dim
    q = am.blocks(am.replicate(d.heads, new.heads), hd)
    kv = am.blocks(am.replicate(d.kv_heads, new.kv_heads), hd)
    ffn = am.replicate(d.ffn, new.ffn)
    if spec.qkv_layout == "per_head":  # GPT-NeoX: for each head, [q k v] rows
        qkv = am.blocks(am.replicate(d.heads, new.heads), 3 * hd)
    else:
        qkv = am.concat([(q, d.heads * hd), (kv, d.kv_heads * hd), (kv, d.kv_heads * hd)])
    return {
        "hidden": am.replicate(d.hidden, new.hidden),
        "ffn": ffn,
        "q": q,
        "kv": kv,
        "qkv": qkv,
        "gate_up": am.concat([(ffn, d.ffn), (ffn, d.ffn)]),
    }


def widen_step(step: Widen, d: Dims, spec: ArchSpec) -> tuple[Dims, dict[str, AxisMap], Equivalence]:
    """One widen step over dims d; raises ValueError('field: message') when it cannot apply."""
    hidden = widen_target(step.hidden, d.hidden) if step.hidden is not None else d.hidden
    ffn = widen_target(step.ffn, d.ffn) if step.ffn is not None else d.ffn
    m = int(step.heads[:-1]) if step.heads is not None else 1
    if hidden < d.hidden:
        raise ValueError(f"hidden: target {hidden} is smaller than the current {d.hidden}; widen never shrinks")
    if ffn < d.ffn:
        raise ValueError(f"ffn: target {ffn} is smaller than the current {d.ffn}; widen never shrinks")
    new = Dims(hidden, ffn, d.heads * m, d.kv_heads * m, d.head_dim)
    if spec.config_keys.head_dim is None and new.heads * d.head_dim != hidden:
        need = hidden / d.hidden
        raise ValueError(
            f"heads: {spec.model_type} derives head_dim as hidden/heads, so with hidden {hidden} it needs "
            f"{hidden / d.head_dim:g} heads of {d.head_dim} (heads: {need:g}x) to keep head_dim; "
            f"grow hidden and heads by the same factor"
            + ("" if need == int(need) else "; this hidden size is not a multiple of head_dim, so it cannot be reached")
        )
    exact = hidden % d.hidden == 0
    return new, _element_maps(spec, d, new), "exact" if exact else "approx"


def compose_plan(
    plan: WidthPlan | None, src: Dims, new: Dims, maps: dict[str, AxisMap], noise: NoiseSpec | None
) -> WidthPlan:
    if plan is None:
        return WidthPlan(src, new, maps, noise)
    axes = {k: am.compose(plan.axes[k], maps[k]) for k in maps}
    return replace(plan, dst=new, axes=axes, noise=noise or plan.noise)


@dataclass(frozen=True)
class Transform:
    """How one tensor becomes its widened self; rows are produced along dim 0 of the output."""

    out_map: AxisMap | None
    in_map: AxisMap | None
    split: bool
    transposed: bool  # GPT-2 Conv1D: stored (in, out)
    folds: tuple[tuple[str, float], ...]  # elementwise scale folds: (fold rule, scale)
    noise: NoiseSpec | None
    key: str  # output tensor name, seeds the noise

    def shape(self, src: tuple[int, ...]) -> tuple[int, ...]:
        sizes = [self.out_map.size if self.out_map else None, self.in_map.size if self.in_map else None]
        if self.transposed:
            sizes.reverse()
        return tuple(s if s is not None else src[i] for i, s in enumerate(sizes[: len(src)])) + tuple(src[2:])


def transform_for(
    role: str | None, is_bias: bool, plan: WidthPlan, spec: ArchSpec
) -> tuple[AxisMap | None, AxisMap | None, bool, bool]:
    """(out map, in map, split, transposed) for a tensor of this role under the plan."""
    if role in ("q_norm", "k_norm"):
        axis = ("q" if role == "q_norm" else "kv") if spec.qk_norm == "full" else None
        return (plan.axes[axis] if axis else None), None, False, False
    out_axis, in_axis, split = ROLE_AXES[role]
    out_map = plan.axes[out_axis] if out_axis else None
    in_map = None if is_bias or in_axis is None else plan.axes[in_axis]
    transposed = (role == "proj_out_t" or spec.transposed_linears and role in LINEAR_ROLES) and not is_bias
    return out_map, in_map, split, transposed


def _gather_rows(load, idx: torch.Tensor) -> torch.Tensor:
    """Rows idx of the source, read as few contiguous runs (mmap slices), in order."""
    if idx.numel() == 0:
        return load(0, 0)
    breaks = (torch.nonzero(idx[1:] != idx[:-1] + 1).flatten() + 1).tolist()
    starts = [0] + breaks
    ends = breaks + [idx.numel()]
    return torch.cat([load(int(idx[a]), int(idx[e - 1]) + 1) for a, e in zip(starts, ends)])


def _noise_std(noise: NoiseSpec, x: torch.Tensor) -> float:
    if noise.std is not None:
        return noise.std
    rms = float(x.pow(2).mean().sqrt()) if x.numel() else 0.0
    return rms * 10 ** (-noise.snr_db / 20)


def _apply_in(t: Transform, x: torch.Tensor, dim: int, start: int) -> torch.Tensor:
    x = am.gather(x, dim, t.in_map, t.split)
    replicated = bool((t.in_map.div != 1).any())
    if t.noise is not None and t.split and replicated:
        gen = torch.Generator().manual_seed(zlib.crc32(f"{t.noise.seed}:{t.key}:{start}".encode()))
        x = x + am.cancelling_noise(tuple(x.shape), dim, t.in_map, _noise_std(t.noise, x), gen)
    return x


def compute_rows(t: Transform, load, is_bias: bool, dtype: torch.dtype, start: int, stop: int) -> torch.Tensor:
    """Output rows start..stop-1; `load(a, b)` reads source rows a..b-1."""
    if t.transposed:  # small GPT-2 Conv1D weights: out units are columns, so compute whole
        x = apply_folds(load(None, None).to(torch.float32), t.folds, is_bias)
        if t.out_map is not None:
            x = am.gather(x, 1, t.out_map, False)
        if t.in_map is not None:
            x = _apply_in(t, x, 0, 0)
        return x[start:stop].to(dtype)
    idx = t.out_map.idx[start:stop] if t.out_map is not None else torch.arange(start, stop)
    x = apply_folds(_gather_rows(load, idx).to(torch.float32), t.folds, is_bias)
    if t.in_map is not None and x.dim() > 1:
        x = _apply_in(t, x, 1, start)
    return x.to(dtype)


def tp_degrees(d: Dims) -> list[int]:
    """Tensor-parallel degrees (up to 8) that divide both head counts (vLLM's requirement)."""
    return [p for p in (1, 2, 4, 8) if d.heads % p == 0 and d.kv_heads % p == 0]


def tied_compensation(plan: WidthPlan, spec: ArchSpec) -> tuple[float, float]:
    """(embedding factor, final-norm factor) that keep a tied model exact under a uniform
    hidden tiling: logits = (a*tile(e)) . (c*tile(h)) = a*c*n*(e.h), so c = 1/(a*n). Gemma
    multiplies embeddings by sqrt(hidden), which grows by sqrt(n): a = 1/sqrt(n) undoes it."""
    n = plan.hidden_ratio
    a = 1 / math.sqrt(n) if spec.embed_scale == "sqrt_hidden" else 1.0
    return a, 1 / (a * n)
