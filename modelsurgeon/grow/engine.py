"""The growth pipeline: plan + checkpoint headers -> layer map -> output tensor list -> one
streaming write into an atomic output directory. Everything that can be checked is checked
from headers before the first byte is written."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.arch.layer_keys import sync_layer_keys
from modelsurgeon.arch.registry import SUPPORTED_FAMILIES, layout_of, resolve_spec
from modelsurgeon.arch.spec import ArchSpec, Layout
from modelsurgeon.errors import CheckpointError, PlanError
from modelsurgeon.grow.provenance import ConfigCheck, finish_grow
from modelsurgeon.grow.tensor_jobs import output_tensors
from modelsurgeon.io.layout import ShardLayout, plan_layout
from modelsurgeon.io.reader import Checkpoint, open_checkpoint
from modelsurgeon.io.writer import DEFAULT_MAX_SHARD, OutTensor, atomic_directory, check_free_space, check_output_path
from modelsurgeon.io.writer import write_shards
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
        from modelsurgeon.ops.moe import summary

        return summary(self.tensors, self.compiled.moe.target, self.config) if self.compiled.moe else None


def _scaling_problems(spec: ArchSpec, layout: Layout, layer_map: LayerMap) -> list[str]:
    """Branch scales need the family's roles: refuse rather than write a wrong model."""
    scaled = sorted({e.source for e in layer_map if e.scale != 1.0})
    if not scaled:
        return []
    if not spec.known:
        return [
            f"branch scales (branch_scale, new: zero, scale) need to know which tensors carry each "
            f"residual branch, and model_type {spec.model_type!r} is not in the architecture table "
            f"(supported: {', '.join(SUPPORTED_FAMILIES)}); plans that only copy or reorder layers work"
        ]
    problems = []
    for i in scaled:
        suffixes = set(layout.layers[i])
        present = spec.branch_tensors(suffixes)
        missing = _missing_branches(spec, present)
        unknown = [s for s in sorted(suffixes) if spec.role_of(s) is None and s not in present]
        if missing:
            problems.append(f"layer {i} lacks the branch output tensor(s) for {missing} that {spec.model_type} should have")
        if unknown:
            problems.append(f"layer {i} has tensors the {spec.model_type} table does not know, so scaling it could be wrong: {unknown}")
    return problems


def _missing_branches(spec: ArchSpec, present: dict[str, tuple[str, str]]) -> list[str]:
    """Branches with no output tensor in a layer; branches sharing a hook are alternatives
    (an MoE layer's experts, or the dense FFN of a layer an MoE family keeps dense)."""
    found = {spec.branches[b].hook or spec.branches[b].module for b, _ in present.values()}
    return [b for b, br in spec.branches.items() if (br.hook or br.module) not in found]


def account(ckpt: Checkpoint, layout: Layout, layer_map: LayerMap) -> dict[str, int]:
    """Sort every input tensor into copied (non-layer), used by an output layer, or dropped
    with a layer the plan leaves out; anything else would vanish silently, so it is an error."""
    used = {e.source for e in layer_map}
    in_used = {n for i in used for n in layout.layers[i].values()}
    dropped = {n for i, layer in enumerate(layout.layers) if i not in used for n in layer.values()}
    lost = set(ckpt.names) - set(layout.others) - in_used - dropped
    if lost:
        raise CheckpointError(f"{len(lost)} input tensor(s) would not reach the output: {sorted(lost)[:5]}",
                              hint="this is a bug in modelsurgeon; please report it")  # fmt: skip
    return {"copied": len(layout.others), "in_mapped_layers": len(in_used), "dropped_with_layers": len(dropped)}


def _widen_config(config: dict, spec: ArchSpec, width: WidthPlan, untied: bool) -> None:
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


def rewrite_config(config: dict, spec: ArchSpec, layer_map: LayerMap, n_source: int) -> tuple[dict, list[str]]:
    """Set the layer count and remap every per-layer config list through the layer map: the
    table's lists, and any other list with one entry per source layer."""
    new = copy.deepcopy(config)
    new[spec.num_layers_key] = len(layer_map)
    keys = [k for k in spec.layer_lists if isinstance(config.get(k), list)]
    if n_source > 1:
        keys += [k for k, v in config.items() if isinstance(v, list) and len(v) == n_source and k not in keys and k not in NOT_PER_LAYER]
    for k in keys:
        if len(config[k]) != n_source:
            raise CheckpointError(
                f"config.json '{k}' has {len(config[k])} entries but the model has {n_source} layers",
                hint=f"fix '{k}' in config.json so it has one entry per layer",
            )
        new[k] = [config[k][e.source] for e in layer_map]
    return new, keys


def _dims(ckpt: Checkpoint, spec: ArchSpec, layout: Layout) -> Dims | None:
    """Width dimensions from config.json, with the FFN size read from the down projection."""
    if not spec.known:
        return None
    down = next((n for s, n in layout.layers[0].items() if spec.role_of(s) == "down" and s.endswith(".weight")), None)
    if down is None:
        return None
    from modelsurgeon.ops.width import model_dims

    shape = ckpt.tensors[down].shape
    return model_dims(spec, ckpt.config, shape[0] if spec.transposed_linears else shape[1])


def prepare(model: str | Path, plan: str | Path | LoadedPlan, max_shard_size: int = DEFAULT_MAX_SHARD) -> Prepared:
    """Validate the plan against the checkpoint from headers alone and lay out the output
    shards; write nothing."""
    loaded = plan if isinstance(plan, LoadedPlan) else load_plan(plan)
    ckpt = open_checkpoint(model)
    spec = resolve_spec(ckpt.config, ckpt.names)
    layout = layout_of(spec, ckpt.config, ckpt.names, str(model))
    dims = _dims(ckpt, spec, layout) if any(isinstance(s, Widen) for s in loaded.plan.steps) else None
    sparse = sparse_layers(spec, layout)
    compiled = compile_plan(loaded.plan, layout.num_layers, loaded.origin, spec, dims, sparse, ckpt.config)
    moe_problems = upcycle_problems(compiled.moe, ckpt.config, layout) if compiled.moe else []
    if moe_problems:
        raise PlanError(loaded.origin, moe_problems, hint="upcycle a model whose layers the MoE family can express")
    problems = _scaling_problems(spec, layout, compiled.layer_map)
    if problems:
        raise PlanError(loaded.origin, problems, hint="use new: copy with branch_scale: 1 or a supported family")
    config, remapped = rewrite_config(ckpt.config, spec, compiled.layer_map, layout.num_layers)
    equivalence = compiled.equivalence
    # scalars that index layers (max_window_layers, ...) re-derived from the remapped lists
    warnings = sync_layer_keys(ckpt.config, config, spec, [e.source for e in compiled.layer_map], layout.num_layers)
    flags = [f for f in spec.position_flags if ckpt.config.get(f)]
    if flags and compiled.layer_map != identity_map(layout.num_layers):
        equivalence = "none"
        warnings.append(f"config sets {flags}: layers compute differently at a new index, so moving them is not exact")
    tensors, untied = output_tensors(ckpt, spec, layout, compiled.layer_map, compiled.width, loaded.origin, compiled.moe)
    if compiled.width is not None:
        _widen_config(config, spec, compiled.width, untied)
        if untied:
            warnings.append("hidden size is not a multiple: tied embeddings were untied (lm_head written)")
    if compiled.moe is not None:
        config = moe_config(config, compiled.moe, config[spec.config_keys.ffn])
    if loaded.dtype is not None:  # a mergekit config's dtype: the write casts, as convert --dtype does
        tensors, config = cast_output(tensors, config, loaded.dtype, ckpt.load, loaded.origin)
    accounting = account(ckpt, layout, compiled.layer_map)
    shards = plan_layout(tensors, max_shard_size)
    return Prepared(ckpt, spec, layout, loaded, compiled, tensors, config, remapped, equivalence, accounting, warnings, shards)


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
