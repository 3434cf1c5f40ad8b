"""A grow plan for people (rich tables: layer map, sizes, width changes); machines get JSON from the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from modelsurgeon.units import human_bytes

if TYPE_CHECKING:
    from modelsurgeon.grow.engine import Prepared
    from modelsurgeon.io.layout import ShardLayout


def layer_map_table(prep: Prepared) -> Table:
    sources = prep.sources or []
    layouts = [(s.ckpt, s.layout) for s in sources] or [(prep.ckpt, prep.layout)]
    per_layer = [[sum(c.tensors[n].numel for n in layer.values()) for layer in lay.layers] for c, lay in layouts]
    t = Table(title=f"layer map: {prep.layout.num_layers} -> {len(prep.layer_map)} layers")
    for col in ("out", "source", "branch scale", "added", "params"):
        t.add_column(col, justify="right")
    for j, e in enumerate(prep.layer_map):
        init = "identity" if e.scale == 0 and e.new else ("copy" if e.new else "")
        src = f"{e.source}" + (f" of {sources[e.model].key}" if e.model else "")
        t.add_row(str(j), src, f"{e.scale:g}", init, f"{per_layer[e.model][e.source]:,}")
    return t


def summary_table(prep: Prepared) -> Table:
    t = Table(title=f"plan '{prep.loaded.plan.name}' on {prep.spec.model_type}", show_header=False)
    t.add_column(justify="right")
    t.add_column()
    for i, s in enumerate(prep.compiled.steps):
        t.add_row(f"step {i}: {s.op}", f"{s.layers_in} -> {s.layers_out} layers, {s.equivalence}")
    t.add_row("equivalence", prep.equivalence)
    t.add_row("parameters", f"{prep.params_in:,} -> {prep.params_out:,}")
    t.add_row("output size", f"{human_bytes(prep.ckpt.total_bytes)} -> {human_bytes(prep.bytes_out)}")
    t.add_row("tensors", f"{len(prep.ckpt.tensors)} -> {len(prep.tensors)}")
    for s in prep.sources[1:]:
        t.add_row("other model", f"{s.key} ({s.layout.num_layers} layers, {human_bytes(s.ckpt.total_bytes)})")
    if prep.remapped_lists:
        t.add_row("config lists remapped", ", ".join(prep.remapped_lists))
    moe = prep.experts
    if moe is not None:
        t.add_row("family", f"{prep.spec.model_type} -> {prep.config['model_type']}")
        t.add_row(
            "experts", f"{moe['experts']} in each of {moe['moe_layers']} MoE layers, top-{moe['top_k']} per token"
        )
        t.add_row("params per token", f"{moe['params_active']:,} active of {moe['params_total']:,} total")
    if prep.shards is not None:
        t.add_row("shards", shard_summary(prep.shards))
    if prep.width is not None:
        # lazy: modelsurgeon.ops.width imports torch/transformers
        from modelsurgeon.ops.width import tp_degrees

        d = prep.width.dst
        t.add_row("tensor parallel", f"{d.heads} query / {d.kv_heads} kv heads divide TP degrees {tp_degrees(d)}")
    for w in prep.warnings:
        t.add_row("[yellow]warning[/]", w)
    return t


def shard_summary(layout: ShardLayout) -> str:
    """How many files, and how much of the output a copy-on-write filesystem can share."""
    n = len(layout.shards)
    how = "each byte-copied run at its source offset" if layout.kind == "aligned" else "packed in order"
    return (
        f"{n} file{'s' if n != 1 else ''}, {how}; {100 * layout.share:.0f}% of the bytes "
        f"({human_bytes(layout.shareable)}) shareable with the source where the filesystem clones (XFS, btrfs)"
    )


def _role(prep: Prepared, name: str) -> str:
    prefix = prep.spec.layer_prefix
    if name.startswith(prefix):
        suffix = name[len(prefix) :].split(".", 1)[1]
        role = prep.spec.role_of(suffix) or suffix
    else:
        role = prep.spec.global_role(name) or name
    return role + (" bias" if name.endswith(".bias") else "")


def _by_role(prep: Prepared, items) -> dict[str, tuple[tuple[int, ...], int]]:
    """role -> (shape of its first tensor, total parameters)."""
    out: dict[str, tuple[tuple[int, ...], int]] = {}
    for name, shape, numel in items:
        role = _role(prep, name)
        first, total = out.get(role, (shape, 0))
        out[role] = (first, total + numel)
    return out


def width_table(prep: Prepared) -> Table:
    """Per tensor class: old and new shape (of one tensor) and the parameter change."""
    before = _by_role(prep, ((n, t.shape, t.numel) for n, t in prep.ckpt.tensors.items()))
    after = _by_role(prep, ((t.name, t.shape, t.numel) for t in prep.tensors))
    s, d = prep.width.src, prep.width.dst
    t = Table(
        title=f"width: hidden {s.hidden}->{d.hidden}, ffn {s.ffn}->{d.ffn}, heads "
        f"{s.heads}/{s.kv_heads}->{d.heads}/{d.kv_heads} (q/kv)"
    )
    for col in ("tensor class", "shape before", "shape after", "params before", "params after"):
        t.add_column(col, justify="right")
    for role in after:
        b_shape, b_n = before.get(role, ((), 0))
        a_shape, a_n = after[role]
        t.add_row(role, str(list(b_shape)), str(list(a_shape)), f"{b_n:,}", f"{a_n:,}")
    return t
