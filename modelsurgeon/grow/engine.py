"""The growth pipeline: plan + checkpoint headers -> layer map -> output tensor list -> one
streaming write into an atomic output directory. Everything that can be checked is checked
from headers before the first byte is written."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.arch.layer_keys import sync_layer_keys
from modelsurgeon.arch.registry import SUPPORTED_FAMILIES, layout_of, resolve_spec, text_config_of
from modelsurgeon.arch.spec import ArchSpec, Layout
from modelsurgeon.arch.vlm import vlm_of
from modelsurgeon.errors import CheckpointError, PlanError
from modelsurgeon.grow.provenance import ConfigCheck, finish_grow
from modelsurgeon.grow.sources import Source, global_sources, open_sources, splice_problems
from modelsurgeon.grow.tensor_jobs import output_tensors
from modelsurgeon.io.layout import ShardLayout, plan_layout
from modelsurgeon.io.reader import Checkpoint, open_checkpoint
from modelsurgeon.io.writer import (
    DEFAULT_MAX_SHARD,
    OutTensor,
    atomic_directory,
    check_free_space,
    check_output_path,
    write_shards,
)
from modelsurgeon.ops.cast import cast_output
from modelsurgeon.ops.compile import Compiled, compile_plan
from modelsurgeon.ops.layermap import Equivalence, LayerMap, identity_map
from modelsurgeon.ops.moe import moe_config, sparse_layers, upcycle_problems
from modelsurgeon.plan.load import LoadedPlan, load_plan
from modelsurgeon.plan.schema import Widen
from modelsurgeon.progress import announce_total

if TYPE_CHECKING:
    from modelsurgeon.ops.width import Dims, WidthPlan

NOT_PER_LAYER = {"architectures"}  # list-valued config keys that never index layers


@dataclass
class Prepared:
    """Everything a grow will do, computed from headers alone (what --dry-run shows)."""

    ckpt: Checkpoint
    spec: ArchSpec
    layout: Layout
    loaded: LoadedPlan
    compiled: Compiled
    tensors: list[OutTensor]
    config: dict
    remapped_lists: list[str]
    equivalence: Equivalence
    accounting: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    shards: ShardLayout | None = None  # which tensors go in which output file (io.layout)
    sources: list[Source] = field(default_factory=list)  # MODEL first, then a splice's other models

    @property
    def computes(self) -> bool:
        """Whether any output tensor is computed (every other one is a byte copy)."""
        return any(t.source is None for t in self.tensors)

    @property
    def layer_map(self) -> LayerMap:
        return self.compiled.layer_map

    @property
    def bytes_out(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def params_in(self) -> int:
        return sum(t.numel for t in self.ckpt.tensors.values())

    @property
    def params_out(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def width(self) -> WidthPlan | None:
        return self.compiled.width

    @property
    def experts(self) -> dict | None:
        """Experts, top-k and total/active parameters of an MoE output (None for dense)."""
        # lazy: import cycle (modelsurgeon.ops.moe imports modelsurgeon.grow.engine)
        from modelsurgeon.ops.moe import summary

        return summary(self.tensors, self.compiled.moe.target, self.config) if self.compiled.moe else None


def _read_by_source(tensors: list[OutTensor], sources: list[Source]) -> list[OutTensor]:
    """Byte copies from a splice's other models as reads from their own checkpoint: the cast
    reads a copied tensor by name from MODEL, where the same name may be another tensor."""
    if len(sources) == 1:
        return tensors
    owner = {info.path: s.ckpt for s in sources[1:] for info in s.ckpt.tensors.values()}
    out = []
    for t in tensors:
        ckpt = owner.get(t.source.path) if t.source is not None else None
        out.append(t if ckpt is None else replace(t, source=None, compute=partial(_rows_of, ckpt, t.source.name)))
    return out


def _rows_of(ckpt: Checkpoint, name: str, start: int, stop: int):
    return ckpt.load(name, (start, stop) if ckpt.tensors[name].shape else None)


def _nest(wrapper: dict, text: dict, spec: ArchSpec, width: WidthPlan | None, untied: bool) -> dict:
    """A vision-language model's config with its rewritten text_config, and the copies of the
    text hidden size (e.g. Qwen2.5-VL's vision_config.out_hidden_size) following it."""
    config = vlm_of(wrapper).nest(wrapper, text, width.dst.hidden if width is not None else None)
    if untied:
        config[spec.tie_key] = False
    return config


def _scaling_problems(spec: ArchSpec, layouts: list[Layout], layer_map: LayerMap) -> list[str]:
    """Branch scales need the family's roles: refuse rather than write a wrong model."""
    scaled = sorted({(e.model, e.source) for e in layer_map if e.scale != 1.0})
    if not scaled:
        return []
    if not spec.known:
        return [
            f"branch scales (branch_scale, new: zero, scale) need to know which tensors carry each "
            f"residual branch, and model_type {spec.model_type!r} is not in the architecture table "
            f"(supported: {', '.join(SUPPORTED_FAMILIES)}); plans that only copy or reorder layers work"
        ]
    problems = []
    for k, i in scaled:
        suffixes = set(layouts[k].layers[i])
        present = spec.branch_tensors(suffixes)
        missing = _missing_branches(spec, present)
        unknown = [s for s in sorted(suffixes) if spec.role_of(s) is None and s not in present]
        if missing:
            problems.append(
                f"layer {i} lacks the branch output tensor(s) for {missing} that {spec.model_type} should have"
            )
        if unknown:
            problems.append(
                f"layer {i} has tensors the {spec.model_type} table does not know, so scaling it could be wrong: "
                f"{unknown}"
            )
    return problems


def _missing_branches(spec: ArchSpec, present: dict[str, tuple[str, str]]) -> list[str]:
    """Branches with no output tensor in a layer; branches sharing a hook are alternatives
    (an MoE layer's experts, or the dense FFN of a layer an MoE family keeps dense)."""
    found = {spec.branches[b].hook or spec.branches[b].module for b, _ in present.values()}
    return [b for b, br in spec.branches.items() if (br.hook or br.module) not in found]


def account(
    ckpt: Checkpoint,
    layout: Layout,
    layer_map: LayerMap,
    sources: list[Source] | None = None,
    taken: dict[str, int] | None = None,
) -> dict[str, int]:
    """Sort every input tensor of MODEL into copied (non-layer), used by an output layer, or
    dropped with a layer the plan leaves out; anything else would vanish silently, so it is an
    error. A splice's tensors from other models are counted apart (replaced: MODEL's non-layer
    tensors another model provides; from_other_models: every tensor taken from the others)."""
    used = {e.source for e in layer_map if e.model == 0}
    in_used = {n for i in used for n in layout.layers[i].values()}
    dropped = {n for i, layer in enumerate(layout.layers) if i not in used for n in layer.values()}
    lost = set(ckpt.names) - set(layout.others) - in_used - dropped
    if lost:
        raise CheckpointError(
            f"{len(lost)} input tensor(s) would not reach the output: {sorted(lost)[:5]}",
            hint="this is a bug in modelsurgeon; please report it",
        )
    out = {"copied": len(layout.others), "in_mapped_layers": len(in_used), "dropped_with_layers": len(dropped)}
    replaced = sum(1 for k in (taken or {}).values() if k)
    foreign = {(e.model, e.source) for e in layer_map if e.model}
    if replaced or foreign:
        out["copied"] -= replaced
        out["replaced"] = replaced
        out["from_other_models"] = replaced + sum(len(sources[k].layout.layers[i]) for k, i in foreign)
    return out


def widen_config(config: dict, spec: ArchSpec, width: WidthPlan, untied: bool) -> None:
    """Write every width dimension explicitly (a derived or null value, e.g. GPT-2's n_inner,
    would otherwise be re-derived from the new hidden size)."""
    keys, d = spec.config_keys, width.dst
    config[keys.hidden], config[keys.ffn], config[keys.heads] = d.hidden, d.ffn, d.heads
    if keys.kv_heads:
        config[keys.kv_heads] = d.kv_heads
    if keys.head_dim:
        config[keys.head_dim] = d.head_dim
    if untied:
        config[spec.tie_key] = False


def rewrite_config(
    config: dict, spec: ArchSpec, layer_map: LayerMap, n_source: int, others: list[dict] | None = None
) -> tuple[dict, list[str]]:
    """Set the layer count and remap every per-layer config list through the layer map: the
    table's lists, and any other list with one entry per source layer. A splice's layer from
    another model takes its entry from that model's config (`others[k - 1]` for model k)."""
    new = copy.deepcopy(config)
    new[spec.num_layers_key] = len(layer_map)
    keys = [k for k in spec.layer_lists if isinstance(config.get(k), list)]
    if n_source > 1:
        keys += [
            k
            for k, v in config.items()
            if isinstance(v, list) and len(v) == n_source and k not in keys and k not in NOT_PER_LAYER
        ]
    configs = [config, *(others or [])]
    for k in keys:
        if len(config[k]) != n_source:
            raise CheckpointError(
                f"config.json '{k}' has {len(config[k])} entries but the model has {n_source} layers",
                hint=f"fix '{k}' in config.json so it has one entry per layer",
            )
        new[k] = [_list_entry(configs[e.model], k, e.source, config) for e in layer_map]
    return new, keys


def _list_entry(config: dict, key: str, i: int, main: dict) -> object:
    """Entry i of a per-layer list in `config` (another model's lists must cover its layers)."""
    values = config.get(key)
    if config is not main and not (isinstance(values, list) and i < len(values)):
        raise CheckpointError(
            f"config.json of another model in the splice has no per-layer '{key}' entry for layer {i}",
            hint=f"give every model of a splice the per-layer list '{key}'",
        )
    return values[i]


def _dims(ckpt: Checkpoint, spec: ArchSpec, layout: Layout) -> Dims | None:
    """Width dimensions from config.json, with the FFN size read from the down projection."""
    if not spec.known:
        return None
    down = next((n for s, n in layout.layers[0].items() if spec.role_of(s) == "down" and s.endswith(".weight")), None)
    if down is None:
        return None
    # lazy: modelsurgeon.ops.width imports torch/transformers
    from modelsurgeon.ops.width import model_dims

    shape = ckpt.tensors[down].shape
    return model_dims(spec, ckpt.config, shape[0] if spec.transposed_linears else shape[1])


def _open_all(loaded: LoadedPlan, model: str | Path) -> tuple[ArchSpec, list[Source], dict[str, int], dict | None]:
    """MODEL's spec, MODEL and the plan's other models (MODEL first), each plan key's index, and
    a vision-language model's whole config (None otherwise: MODEL's config is its text config)."""
    ckpt = open_checkpoint(model)
    spec = resolve_spec(ckpt.config, ckpt.names)
    wrapper = ckpt.config if spec.wrapper else None
    if wrapper is not None:  # every op works on the text tower's config; nested back at the end
        ckpt = replace(ckpt, config=text_config_of(wrapper))
    main = Source(str(model), ckpt, layout_of(spec, ckpt.config, ckpt.names, str(model)))
    if not loaded.plan.models:
        return spec, [main], {}, wrapper
    sources, index = open_sources(loaded.plan, main, spec, loaded.origin)
    return spec, sources, index, wrapper


def _check(
    loaded: LoadedPlan, spec: ArchSpec, sources: list[Source], compiled: Compiled, taken: dict[str, int]
) -> None:
    """Every problem the headers show, raised at once before anything is written."""
    ckpt, layout = sources[0].ckpt, sources[0].layout
    problems = splice_problems(spec, sources, compiled.layer_map, taken) if len(sources) > 1 else []
    if problems:
        raise PlanError(loaded.origin, problems, hint="a splice takes layers from checkpoints of one family and width")
    moe_problems = upcycle_problems(compiled.moe, ckpt.config, layout) if compiled.moe else []
    if moe_problems:
        raise PlanError(loaded.origin, moe_problems, hint="upcycle a model whose layers the MoE family can express")
    problems = _scaling_problems(spec, [s.layout for s in sources], compiled.layer_map)
    if problems:
        raise PlanError(loaded.origin, problems, hint="use new: copy with branch_scale: 1 or a supported family")


def prepare(model: str | Path, plan: str | Path | LoadedPlan, max_shard_size: int = DEFAULT_MAX_SHARD) -> Prepared:
    """Validate the plan against the checkpoint(s) from headers alone and lay out the output
    shards; write nothing."""
    loaded = plan if isinstance(plan, LoadedPlan) else load_plan(plan)
    spec, sources, index, wrapper = _open_all(loaded, model)
    ckpt, layout = sources[0].ckpt, sources[0].layout
    dims = _dims(ckpt, spec, layout) if any(isinstance(s, Widen) for s in loaded.plan.steps) else None
    sparse = sparse_layers(spec, layout)
    models = {key: (k, sources[k].layout.num_layers) for key, k in index.items()}
    compiled = compile_plan(loaded.plan, layout.num_layers, loaded.origin, spec, dims, sparse, ckpt.config, models)
    taken = global_sources(loaded.plan, index, spec, sources[0])
    _check(loaded, spec, sources, compiled, taken)
    others = [s.ckpt.config for s in sources[1:]]
    config, remapped = rewrite_config(ckpt.config, spec, compiled.layer_map, layout.num_layers, others)
    equivalence = compiled.equivalence
    # scalars that index layers (max_window_layers, ...) re-derived from the remapped lists
    warnings = sync_layer_keys(ckpt.config, config, spec, [e.source for e in compiled.layer_map], layout.num_layers)
    flags = [f for f in spec.position_flags if ckpt.config.get(f)]
    if flags and compiled.layer_map != identity_map(layout.num_layers):
        equivalence = "none"
        warnings.append(f"config sets {flags}: layers compute differently at a new index, so moving them is not exact")
    tensors, untied = output_tensors(
        sources, spec, compiled.layer_map, compiled.width, loaded.origin, compiled.moe, taken
    )
    if compiled.width is not None:
        widen_config(config, spec, compiled.width, untied)
        if untied:
            warnings.append("hidden size is not a multiple: tied embeddings were untied (lm_head written)")
    if compiled.moe is not None:
        config = moe_config(config, compiled.moe, config[spec.config_keys.ffn])
    if wrapper is not None:
        config = _nest(wrapper, config, spec, compiled.width, untied)
    if loaded.dtype is not None:  # a mergekit config's dtype: the write casts, as convert --dtype does
        tensors, config = cast_output(_read_by_source(tensors, sources), config, loaded.dtype, ckpt.load, loaded.origin)
    accounting = account(ckpt, layout, compiled.layer_map, sources, taken)
    shards = plan_layout(tensors, max_shard_size)
    return Prepared(
        ckpt,
        spec,
        layout,
        loaded,
        compiled,
        tensors,
        config,
        remapped,
        equivalence,
        accounting,
        warnings,
        shards=shards,
        sources=sources,
    )


def grow(
    model: str | Path,
    plan: str | Path | LoadedPlan,
    out: str | Path,
    force: bool = False,
    max_shard_size: int = DEFAULT_MAX_SHARD,
    progress: Callable[[int], None] | None = None,
) -> Prepared:
    """Apply a plan to a checkpoint and write the grown checkpoint to `out` atomically."""
    prep = prepare(model, plan, max_shard_size)
    out = Path(out)
    check_output_path(out, prep.ckpt.path, force)
    check_free_space(out, prep.bytes_out)
    announce_total(progress, prep.bytes_out)
    # A pure byte copy never imports torch or transformers (seconds of CPU next to a copy that
    # runs at disk speed); its config is checked structurally instead.
    check = ConfigCheck(prep.config, prep.spec.num_layers_key, len(prep.layer_map), with_transformers=prep.computes)
    with atomic_directory(out) as tmp:
        write_shards(tmp, prep.tensors, max_shard_size, progress, layout=prep.shards)
        finish_grow(prep, tmp, check)
    return prep
