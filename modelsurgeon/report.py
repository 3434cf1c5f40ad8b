"""Render results for people (rich tables); machines get JSON from the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from modelsurgeon.engine import Prepared


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def human_count(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if abs(n) < 1000 or unit == "B":
            return f"{n:.0f}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}B"


def layer_map_table(prep: Prepared) -> Table:
    per_layer = {e: 0 for e in range(prep.layout.num_layers)}
    for i, layer in enumerate(prep.layout.layers):
        per_layer[i] = sum(prep.ckpt.tensors[n].numel for n in layer.values())
    t = Table(title=f"layer map: {prep.layout.num_layers} -> {len(prep.layer_map)} layers")
    for col in ("out", "source", "branch scale", "added", "params"):
        t.add_column(col, justify="right")
    for j, e in enumerate(prep.layer_map):
        init = "identity" if e.scale == 0 and e.new else ("copy" if e.new else "")
        t.add_row(str(j), str(e.source), f"{e.scale:g}", init, f"{per_layer[e.source]:,}")
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
    if prep.remapped_lists:
        t.add_row("config lists remapped", ", ".join(prep.remapped_lists))
    for w in prep.warnings:
        t.add_row("[yellow]warning[/]", w)
    return t


def inspect_table(info: dict) -> Table:
    t = Table(title=info["path"], show_header=False)
    t.add_column(justify="right")
    t.add_column()
    fam = info["model_type"] + ("" if info["in_table"] else " (not in the table: copy/reorder ops only)")
    rows = [
        ("family", fam), ("layers", str(info["num_layers"])), ("residual", str(info["residual"])),
        ("parameters", f"{info['params']:,}"), ("size", human_bytes(info["bytes"])),
        ("dtypes", ", ".join(f"{k}: {v}" for k, v in info["dtypes"].items())),
        ("shards", f"{len(info['shards'])} ({info['tensors']} tensors)"),
        ("tied embeddings", f"{info['tie_word_embeddings']} (lm_head stored: {info['lm_head_stored']})"),
    ]  # fmt: skip
    for k, v in info["per_layer_config_lists"].items():
        rows.append((k, ", ".join(map(str, v))))
    for k, v in rows:
        t.add_row(k, v)
    return t
