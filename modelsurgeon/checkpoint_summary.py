"""What a checkpoint is (`surgeon inspect`), from its config and headers alone (no tensor data is read)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.table import Table

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.io.reader import open_checkpoint
from modelsurgeon.units import human_bytes


def summarize_checkpoint(path: str | Path) -> dict:
    ckpt = open_checkpoint(path)
    spec = resolve_spec(ckpt.config, ckpt.names)
    layout = layout_of(spec, ckpt.config, ckpt.names, str(path))
    n = layout.num_layers
    lists = {
        k: v
        for k, v in ckpt.config.items()
        if isinstance(v, list) and (k in spec.layer_lists or len(v) == n) and k != "architectures"
    }
    names = set(ckpt.names)
    lm_head = next((g for g, role in spec.globals.items() if role == "lm_head"), None)
    return {
        "path": str(Path(path).resolve()),
        "model_type": spec.model_type,
        "in_table": spec.known,
        "architectures": ckpt.config.get("architectures"),
        "num_layers": n,
        "layer_prefix": spec.layer_prefix,
        "residual": spec.residual,
        "params": sum(t.numel for t in ckpt.tensors.values()),
        "bytes": ckpt.total_bytes,
        "dtypes": dict(Counter(t.dtype for t in ckpt.tensors.values())),
        "shards": [f.name for f in ckpt.files],
        "tensors": len(ckpt.tensors),
        "tie_word_embeddings": bool(ckpt.config.get(spec.tie_key, False)),
        "lm_head_stored": bool(lm_head and f"{lm_head}.weight" in names),
        "per_layer_config_lists": lists,
        "tensors_per_layer": len(layout.layers[0]) if n else 0,
    }


def checkpoint_table(info: dict) -> Table:
    t = Table(title=info["path"], show_header=False)
    t.add_column(justify="right")
    t.add_column()
    fam = info["model_type"] + ("" if info["in_table"] else " (not in the table: copy/reorder ops only)")
    rows = [
        ("family", fam),
        ("layers", str(info["num_layers"])),
        ("residual", str(info["residual"])),
        ("parameters", f"{info['params']:,}"),
        ("size", human_bytes(info["bytes"])),
        ("dtypes", ", ".join(f"{k}: {v}" for k, v in info["dtypes"].items())),
        ("shards", f"{len(info['shards'])} ({info['tensors']} tensors)"),
        ("tied embeddings", f"{info['tie_word_embeddings']} (lm_head stored: {info['lm_head_stored']})"),
    ]
    for k, v in info["per_layer_config_lists"].items():
        rows.append((k, ", ".join(map(str, v))))
    for k, v in rows:
        t.add_row(k, v)
    return t
