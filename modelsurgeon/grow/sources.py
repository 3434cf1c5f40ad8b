"""The checkpoints of a multi-model splice: MODEL plus every other checkpoint a plan names
(`layers` entries with `model:`, `embeddings_from:`, `head_from:`), opened from headers, and the
checks that they can be stitched together: one family, one set of widths, and every layer taken
from another model shaped exactly like a layer of MODEL. Every problem is reported at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.arch.spec import ArchSpec, Layout
from modelsurgeon.errors import CheckpointError, PlanError
from modelsurgeon.io.reader import Checkpoint, open_checkpoint
from modelsurgeon.ops.layermap import LayerMap
from modelsurgeon.plan.schema import Plan

# Which side of the network each non-layer role sits on: `embeddings_from` takes the input side,
# `head_from` the output side (mergekit's passthrough takes them from the first and last slice).
INPUT_ROLES = ("embed", "pos_embed")
OUTPUT_ROLES = ("final_norm", "lm_head")
# config.json keys every source must share besides the family's width keys.
SHARED_KEYS = ("model_type", "vocab_size")


@dataclass(frozen=True)
class Source:
    """One checkpoint of a splice; `key` is how the plan names it (MODEL's is the CLI argument)."""

    key: str
    ckpt: Checkpoint
    layout: Layout


def _same_dir(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def open_sources(plan: Plan, main: Source, spec: ArchSpec, origin: str) -> tuple[list[Source], dict[str, int]]:
    """(sources: MODEL first, then each other checkpoint once; index of each plan key in it).
    A key naming MODEL's own directory maps to MODEL (index 0).

    Raises:
        PlanError: a named model is not a checkpoint directory (every such model listed at once).
    """
    sources, index, problems = [main], {}, []
    for key in plan.models:
        path = Path(key)
        if path.is_dir() and _same_dir(path, main.ckpt.path):
            index[key] = 0
            continue
        try:
            ckpt = open_checkpoint(path)
            layout = layout_of(resolve_spec(ckpt.config, ckpt.names), ckpt.config, ckpt.names, key)
        except CheckpointError as exc:
            problems.append(f"model {key!r}: {exc.message}" + (f" [hint: {exc.hint}]" if exc.hint else ""))
            continue
        index[key] = len(sources)
        sources.append(Source(key, ckpt, layout))
    if problems:
        raise PlanError(
            origin,
            problems,
            hint="a model in a plan is a local checkpoint directory (config.json + "
            "*.safetensors), relative to the current directory; download hub models first",
        )
    return sources, index


def _config_problems(spec: ArchSpec, main: Source, other: Source) -> list[str]:
    keys = list(SHARED_KEYS) + [k for k in spec.config_keys.model_dump().values() if k]
    a, b = main.ckpt.config, other.ckpt.config
    return [
        f"model {other.key!r}: config.json {k} = {b.get(k)!r}, MODEL has {a.get(k)!r}"
        for k in keys
        if a.get(k) != b.get(k)
    ]


def _signature(ckpt: Checkpoint, layer: dict[str, str]) -> dict[str, tuple]:
    return {suffix: (ckpt.tensors[name].dtype, ckpt.tensors[name].shape) for suffix, name in layer.items()}


def _layer_problem(main: Source, other: Source, i: int) -> str | None:
    """None when layer i of `other` has the tensors, dtypes and shapes of some layer of MODEL;
    else what differs from MODEL's layer of the same index (or its first)."""
    sig = _signature(other.ckpt, other.layout.layers[i])
    known = [_signature(main.ckpt, layer) for layer in main.layout.layers]
    if sig in known:
        return None
    ref = known[min(i, len(known) - 1)]
    missing, extra = sorted(set(ref) - set(sig)), sorted(set(sig) - set(ref))
    differ = [
        f"{s} {sig[s][0]}{list(sig[s][1])} (MODEL: {ref[s][0]}{list(ref[s][1])})"
        for s in sorted(set(sig) & set(ref))
        if sig[s] != ref[s]
    ]
    parts = ([f"missing {missing}"] if missing else []) + ([f"extra {extra}"] if extra else []) + differ[:4]
    return f"model {other.key!r} layer {i}: " + "; ".join(parts)


def global_sources(plan: Plan, index: dict[str, int], spec: ArchSpec, main: Source) -> dict[str, int]:
    """Non-layer tensor name -> the source index it is taken from (0 unless the plan says)."""
    out = {}
    for name in main.layout.others:
        role = spec.globals.get(name.rsplit(".", 1)[0])
        chosen = plan.embeddings_from if role in INPUT_ROLES else plan.head_from if role in OUTPUT_ROLES else None
        out[name] = index[chosen] if chosen else 0
    return out


def _global_problems(sources: list[Source], taken: dict[str, int]) -> list[str]:
    main, problems = sources[0], []
    for name, k in taken.items():
        if k == 0:
            continue
        other, mine = sources[k], main.ckpt.tensors[name]
        info = other.ckpt.tensors.get(name)
        if info is None:
            problems.append(f"model {other.key!r} has no tensor {name!r} (MODEL's {name} would be replaced by it)")
        elif (info.dtype, info.shape) != (mine.dtype, mine.shape):
            problems.append(
                f"model {other.key!r}: {name} is {info.dtype}{list(info.shape)}, MODEL's is "
                f"{mine.dtype}{list(mine.shape)}"
            )
    return problems


def _tie_problems(spec: ArchSpec, sources: list[Source], taken: dict[str, int]) -> list[str]:
    """A tied head is the embedding matrix: it cannot come from another model than the embeddings."""
    main = sources[0]
    if main.ckpt.config.get(spec.tie_key) is False or not any(k for k in taken.values()):
        return []
    lm_head = next((f"{m}.weight" for m, r in spec.globals.items() if r == "lm_head"), None)
    if lm_head is None or lm_head in main.ckpt.tensors:
        return []
    embed_from = {taken[n] for n in taken if spec.globals.get(n.rsplit(".", 1)[0]) == "embed"}
    head_from = {taken[n] for n in taken if spec.globals.get(n.rsplit(".", 1)[0]) == "final_norm"}
    if embed_from != head_from:
        return [
            "MODEL ties its output head to the input embeddings, so embeddings_from and head_from must name the "
            "same model"
        ]
    return []


def splice_problems(spec: ArchSpec, sources: list[Source], layer_map: LayerMap, taken: dict[str, int]) -> list[str]:
    """Everything that stops these sources from being stitched by this map, from headers alone."""
    main, problems = sources[0], []
    for other in sources[1:]:
        other_spec = resolve_spec(other.ckpt.config, other.ckpt.names)
        if other_spec.model_type != spec.model_type or other_spec.layer_prefix != spec.layer_prefix:
            problems.append(
                f"model {other.key!r} is a {other_spec.model_type}, MODEL a {spec.model_type}: "
                "a splice needs one family"
            )
            continue
        problems += _config_problems(spec, main, other)
    if problems:  # layer-by-layer comparisons only mean something within one family and width
        return problems
    used = sorted({(e.model, e.source) for e in layer_map if e.model})
    problems += [p for k, i in used if (p := _layer_problem(main, sources[k], i))]
    return problems + _global_problems(sources, taken) + _tie_problems(spec, sources, taken)
