"""Growing into experts: `op: upcycle` (each dense FFN becomes identical experts behind a new
router) and `op: experts` (each expert and its router row copied `factor` times).

Both are exact at initialisation. Identical experts with renormalised top-k weights sum to the
dense FFN for any router. m copies of every expert, picked m at a time with top-k * m, carry
m * (p / m) = p of the weight each expert had. Plan-level logic only (no torch): which layers
are sparse, the output family, its config and the output tensor list; the tensor math is in
moe_init.py."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

from modelsurgeon.arch.registry import load_specs
from modelsurgeon.arch.spec import ArchSpec, Layout
from modelsurgeon.io.writer import OutTensor
from modelsurgeon.ops.layermap import Equivalence, Local
from modelsurgeon.plan.schema import Experts, RouterInit, Upcycle
from modelsurgeon.plan.selection import resolve_selection

FFN_ROLES = ("gate", "up", "down")


@dataclass(frozen=True)
class ExpertGrowth:
    """The MoE side of a compiled plan, for every MoE output (upcycled or an MoE source)."""

    source: ArchSpec
    target: ArchSpec
    sparse: tuple[bool, ...]  # per output layer: its FFN is a mixture of experts
    experts_in: int | None  # the source's expert count (None: dense source)
    upcycle: Upcycle | None = None
    factor: int = 1
    keep_top_k: bool = False

    def remap(self, local: Local) -> ExpertGrowth:
        return replace(self, sparse=tuple(self.sparse[e.source] for e in local))

    @property
    def experts(self) -> int:
        base = self.upcycle.experts if self.upcycle is not None else self.experts_in
        return base * self.factor


def upcycle_target(spec: ArchSpec) -> ArchSpec:
    """The MoE family whose layers are this dense family's with a sparse FFN."""
    pairs = {src: s for s in load_specs().values() if s.moe for src in s.moe.upcycles}
    if spec.model_type not in pairs:
        listed = ", ".join(f"{src} -> {t.model_type}" for src, t in sorted(pairs.items()))
        raise ValueError(f"op: {spec.model_type} has no MoE counterpart in the table; upcycle supports {listed}")
    return pairs[spec.model_type]


def sparse_layers(spec: ArchSpec, layout: Layout) -> tuple[bool, ...] | None:
    """Per source layer, whether it holds a router (None for a dense family)."""
    if spec.moe is None:
        return None
    router = f"{spec.moe.router}.weight"
    return tuple(router in layer for layer in layout.layers)


def start(spec: ArchSpec, sparse: tuple[bool, ...] | None, config: dict) -> ExpertGrowth | None:
    if sparse is None:
        return None
    return ExpertGrowth(spec, spec, sparse, int(config[spec.moe.experts_key(config)]))


def apply_step(
    step: Upcycle | Experts, state: ExpertGrowth | None, spec: ArchSpec, n: int
) -> tuple[ExpertGrowth, Equivalence]:
    """Fold one MoE step into the state; ValueError('field: ...') when it does not fit."""
    if isinstance(step, Experts):
        if state is None:
            moe = ", ".join(sorted(s.model_type for s in load_specs().values() if s.moe))
            raise ValueError(f"op: experts needs an MoE model ({moe}) or an upcycle step before it")
        return replace(state, factor=state.factor * step.factor, keep_top_k=state.keep_top_k or step.keep_top_k), (
            "none" if step.keep_top_k else "exact"
        )
    if state is not None:
        what = "the plan already upcycles" if state.upcycle else f"{spec.model_type} is already a mixture of experts"
        raise ValueError(f"op: {what}; use op: experts to add experts")
    target = upcycle_target(spec)
    try:
        chosen = set(resolve_selection(step.layers, n))
    except ValueError as exc:
        raise ValueError(f"layers: {exc}") from None
    if len(chosen) < n and target.moe.dense_layers_key is None:
        raise ValueError(
            f"layers: {target.model_type} has no dense layers, so every layer must be upcycled (layers: all)"
        )
    sparse = tuple(i in chosen for i in range(n))
    return ExpertGrowth(spec, target, sparse, None, upcycle=step), "none" if step.perturbed else "exact"


def upcycle_problems(growth: ExpertGrowth, config: dict, layout: Layout) -> list[str]:
    """What in the source config or tensors the MoE family cannot express (all at once)."""
    if growth.upcycle is None:
        return []
    t, problems = growth.target, []
    for key in t.moe.refuse_if:
        if config.get(key):
            problems.append(f"config.json sets {key}={config[key]!r}, which {t.model_type} cannot express")
    if "layer_types" in t.moe.drop_config and any(k != "full_attention" for k in config.get("layer_types") or []):
        problems.append(
            f"config.json layer_types has sliding-window layers; {t.model_type} applies one window to all layers"
        )
    biased = sorted(
        {s for layer in layout.layers for s in layer if s.endswith(".bias") and growth.source.role_of(s) in FFN_ROLES}
    )
    if biased:
        problems.append(f"the FFN has biases ({biased[:3]}); {t.model_type} experts have none")
    return problems


def moe_config(config: dict, growth: ExpertGrowth, ffn: int) -> dict:
    """The output config: the MoE family's keys (upcycle), expert and top-k counts, and the
    list of dense layers remapped through the layer map."""
    t = growth.target.moe
    new = dict(config)
    if growth.upcycle is not None:
        for key in t.drop_config:
            new.pop(key, None)
        new.update(model_type=growth.target.model_type, architectures=list(growth.target.architectures))
        new.update({t.expert_ffn_key: ffn, t.top_k_key: growth.upcycle.top_k, **t.set_config})
        if t.shared_ffn_key:
            new[t.shared_ffn_key] = ffn
        if t.norm_topk_key:  # renormalised top-k: identical experts sum to the dense FFN
            new[t.norm_topk_key] = True
    new[t.experts_key(new)] = growth.experts
    if not growth.keep_top_k:
        new[t.top_k_key] = new[t.top_k_key] * growth.factor
    if t.dense_layers_key:
        new[t.dense_layers_key] = [j for j, s in enumerate(growth.sparse) if not s]
    if t.sparse_step_key:  # the dense layers are listed explicitly instead
        new[t.sparse_step_key] = 1
    return new


Make = Callable[[object], OutTensor]  # a build Job -> its OutTensor


def _layer_of(name: str, spec: ArchSpec) -> tuple[int, str] | None:
    if not name.startswith(spec.layer_prefix):
        return None
    j, suffix = name[len(spec.layer_prefix) :].split(".", 1)
    return int(j), suffix


def moe_tensors(ckpt, growth: ExpertGrowth, jobs: list, make: Make) -> list[OutTensor]:
    """Every output tensor: non-FFN tensors as `make` builds them, sparse layers' FFNs expanded."""
    out: list[OutTensor] = []
    keyed = [(_layer_of(job.out, growth.source), job) for job in jobs]
    for j, group in itertools.groupby(keyed, key=lambda kj: kj[0][0] if kj[0] else None):
        group = [job for _, job in group]
        if j is None or not growth.sparse[j]:
            out += [make(job) for job in group]
        elif growth.upcycle is not None:
            out += _upcycled_layer(ckpt, growth, j, group, make)
        else:
            out += _copied_experts(ckpt, growth, j, group, make)
    return out


def _name(growth: ExpertGrowth, j: int, module: str, job) -> str:
    return growth.target.layer_tensor(j, f"{module}.{job.out.rsplit('.', 1)[1]}")


def _upcycled_layer(ckpt, growth: ExpertGrowth, j: int, jobs: list, make: Make) -> list[OutTensor]:
    t, up = growth.target.moe, growth.upcycle
    by_role = {t.expert_modules[m]: m for m in t.expert_modules}
    shared = {role: m for m, role in t.shared.items()}
    out, ffn = [], [job for job in jobs if job.role in FFN_ROLES]
    out += [make(job) for job in jobs if job.role not in FFN_ROLES]
    gate = next(job for job in ffn if job.role == "gate")
    made = make(gate)  # after any width step: the router reads the output's hidden size
    dtype, hidden = made.dtype, made.shape[1]
    for job in ffn:
        # With a shared expert behind sigmoid(0) = 1/2, the routed experts carry the other half.
        half = (("multiply", 0.5),) if shared and job.role == "down" else ()
        for e in range(growth.experts):
            expert = replace(
                job, out=_name(growth, j, t.expert_module(e, by_role[job.role]), job), folds=job.folds + half
            )
            out.append(_perturbed(ckpt, make(expert), expert, up, f"{j}:{e}") if up.perturbed else make(expert))
        if shared:
            out.append(make(replace(job, out=_name(growth, j, shared[job.role], job))))
    out.append(_router(f"{growth.target.layer_tensor(j, t.router)}.weight", (growth.experts, hidden), dtype, up.router))
    if t.shared_router:  # zero: sigmoid(0) = 1/2 on every token
        zero = up.router.model_copy(update={"init": "zero"})
        out.append(_router(f"{growth.target.layer_tensor(j, t.shared_router)}.weight", (1, hidden), dtype, zero))
    return out


def _copied_experts(ckpt, growth: ExpertGrowth, j: int, jobs: list, make: Make) -> list[OutTensor]:
    t, m = growth.target.moe, growth.factor
    out = []
    for job in jobs:
        module = _layer_of(job.out, growth.source)[1].rsplit(".", 1)[0]
        found = t.expert_role(module)
        if found is not None:
            e = found[0]
            inner = module[len(t.expert_module(e, "")) :]
            out += [make(replace(job, out=_name(growth, j, t.expert_module(e * m + c, inner), job))) for c in range(m)]
        elif job.role == "router" and m > 1:
            out.append(_copied_router(ckpt, job, m))
        else:
            out.append(make(job))
    return out


def _torch_dtype(dtype: str):
    # lazy: modelsurgeon.io.dtypes imports torch/transformers
    from modelsurgeon.io.dtypes import ST_TO_TORCH

    return ST_TO_TORCH[dtype]


def _whole(shape: tuple[int, ...], make_value: Callable) -> Callable:
    """A compute(start, stop) over a tensor made whole once (routers, perturbed experts)."""
    cache: list = []

    def rows(a: int, b: int):
        if not cache:
            cache.append(make_value())
        return cache[0][a:b]

    return rows


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    # lazy: import cycle (modelsurgeon.io.st_format imports modelsurgeon.ops.moe)
    from modelsurgeon.io.st_format import DTYPE_SIZES

    n = DTYPE_SIZES[dtype]
    for d in shape:
        n *= d
    return n


def _router(name: str, shape: tuple[int, int], dtype: str, init: RouterInit) -> OutTensor:
    def value():
        # lazy: modelsurgeon.ops.moe_init imports torch/transformers
        from modelsurgeon.ops.moe_init import router_weight

        return router_weight(init, shape, _torch_dtype(dtype), name)

    return OutTensor(name, dtype, shape, _nbytes(dtype, shape), compute=_whole(shape, value))


def _copied_router(main, job, m: int) -> OutTensor:
    ckpt = job.ckpt or main
    info = ckpt.tensors[job.src]
    shape = (info.shape[0] * m, *info.shape[1:])

    def value():
        # lazy: modelsurgeon.ops.moe_init imports torch/transformers
        from modelsurgeon.ops.moe_init import repeat_rows

        return repeat_rows(ckpt.load(job.src), m)

    return OutTensor(job.out, info.dtype, shape, _nbytes(info.dtype, shape), compute=_whole(shape, value))


def _perturbed(ckpt, base: OutTensor, job, up: Upcycle, expert_key: str) -> OutTensor:
    """The expert tensor with Drop-Upcycling and/or noise applied, made whole once."""

    def value():
        # lazy: modelsurgeon.ops.moe_init imports torch/transformers
        from modelsurgeon.ops.moe_init import add_noise, drop_upcycle

        x = base.compute(0, base.shape[0]) if base.compute else (job.ckpt or ckpt).load(job.src)
        if up.drop is not None:
            x = drop_upcycle(x, job.role, up.drop, expert_key, base.name)
        if up.noise is not None and up.noise.std > 0:
            x = add_noise(x, up.noise, base.name)
        return x

    return OutTensor(base.name, base.dtype, base.shape, base.nbytes, compute=_whole(base.shape, value))


def summary(tensors: list[OutTensor], spec: ArchSpec, config: dict) -> dict:
    """Experts, top-k and parameter counts of a mixture-of-experts model: total, and active
    per token (every tensor but the experts a token is not routed to)."""
    moe = spec.moe
    experts, top_k = int(config[moe.experts_key(config)]), int(config[moe.top_k_key])
    per_layer: dict[int, int] = {}  # layer -> params of its expert 0
    layers: set[int] = set()
    for t in tensors:
        at = _layer_of(t.name, spec)
        found = moe.expert_role(at[1].rsplit(".", 1)[0]) if at else None
        if found is not None:
            layers.add(at[0])
            if found[0] == 0:
                per_layer[at[0]] = per_layer.get(at[0], 0) + t.numel
    total = sum(t.numel for t in tensors)
    inactive = sum(p * (experts - top_k) for p in per_layer.values())
    return {
        "experts": experts,
        "top_k": top_k,
        "moe_layers": len(layers),
        "params_total": total,
        "params_active": total - inactive,
    }
