"""Merge a peft LoRA adapter into a base checkpoint one tensor at a time.

W' = W + scaling * B @ A for every adapted linear (transposed for GPT-2's Conv1D, which
stores W as (in, out)), with scaling = alpha / r, or alpha / sqrt(r) under rsLoRA, and r and
alpha resolved per module from rank_pattern / alpha_pattern exactly as peft resolves them.
Merged tensors are computed in float32 a block of rows at a time and cast back to the base's
dtype; every other tensor is byte-copied. Memory therefore stays at one row block plus the
adapter, whatever the model's size (as litgpt's merge_lora, but streamed through the
project's writer). Full tensors an adapter carries (`modules_to_save`, `bias="all"`) replace
the base's. Adapter kinds whose merge is not W + s*B@A (DoRA, activated LoRA, QA-LoRA,
layer replication, LoRA on embeddings or raw parameters, PiSSA-style inits that rewrote the
base) are refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.errors import CheckpointError
from modelsurgeon.io.hf_files import file_sha256
from modelsurgeon.io.reader import Checkpoint, open_checkpoint, read_json_object
from modelsurgeon.io.st_format import TensorInfo, read_header
from modelsurgeon.io.writer import (
    DEFAULT_MAX_SHARD,
    OutTensor,
    atomic_directory,
    check_free_space,
    check_no_overlap,
    check_output_path,
    write_shards,
)
from modelsurgeon.manifest import MANIFEST, MergeLoraStage, extend_lineage, finish_output, read_manifest, source_record
from modelsurgeon.progress import announce_total

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# "<module>.lora_A.weight", optionally with the adapter's name ("lora_A.default.weight").
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.(?P<kind>weight|bias)$")
# Config switches whose merge is not W + s*B@A, with what to tell the user.
UNMERGEABLE = {
    "use_dora": "DoRA rescales each column by a learned magnitude",
    "use_qalora": "QA-LoRA applies A to pooled inputs",
    "use_bdlora": "block-diagonal LoRA",
    "alora_invocation_tokens": "activated LoRA only applies after its invocation tokens",
    "layer_replication": "layer replication changes the base model's layer stack",
    "target_parameters": "LoRA on raw nn.Parameters (MoE experts)",
    "trainable_token_indices": "trainable-token deltas on the embeddings",
}
# init_lora_weights values that rewrite the base weights at init; the adapter then only makes
# sense on that rewritten base (peft converts them to plain LoRA when saved with
# path_initial_model_for_weight_conversion, which resets this field to true).
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass(frozen=True)
class LoraPair:
    """One adapted module: adapter tensor names, and how its delta lands on the base."""

    module: str
    a: str
    b: str
    bias: str | None
    scaling: float
    transposed: bool


@dataclass
class Adapter:
    path: Path
    config: dict
    tensors: dict[str, TensorInfo]  # adapter tensor name -> location
    pairs: dict[str, LoraPair]  # base weight name -> its LoRA pair
    replaced: dict[str, str]  # base tensor name -> adapter tensor name

    def load(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.tensors[name].path, framework="pt") as fh:
            return fh.get_tensor(name) if rows is None else fh.get_slice(name)[rows[0] : rows[1]]


def _read_adapter_config(adapter: Path) -> dict:
    if not adapter.is_dir():
        raise CheckpointError(
            f"{adapter}: not a directory", hint="pass the directory peft's save_pretrained wrote as ADAPTER"
        )
    cfg_path, weights = adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{adapter}: no {ADAPTER_CONFIG}",
            hint="ADAPTER must be a peft adapter directory (adapter_config.json + adapter_model.safetensors)",
        )
    if not weights.is_file():
        pickled = (adapter / "adapter_model.bin").is_file()
        raise CheckpointError(
            f"{adapter}: no {ADAPTER_WEIGHTS}{' (only adapter_model.bin)' if pickled else ''}",
            hint="save the adapter with peft's save_pretrained (safe_serialization=True, the default)",
        )
    return read_json_object(cfg_path, hint="re-save the adapter")


def _refusals(config: dict) -> list[str]:
    problems = []
    if str(config.get("peft_type", "")).upper() != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; only LORA adapters can be merged")
    problems += [f"{key}: {why}" for key, why in UNMERGEABLE.items() if config.get(key)]
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        problems.append(f"init_lora_weights={init!r} rewrote the base weights when the adapter was created")
    return problems


def _pattern_value(patterns: dict, module: str, default):
    """peft's get_pattern_key: the first pattern that matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scaling(config: dict, module: str, rank: int, problems: list[str]) -> float | None:
    r = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r"))
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha"))
    if r != rank or not isinstance(alpha, (int, float)):
        problems.append(
            f"module '{module}' has rank {rank} in the weights, but adapter_config.json gives r={r}, lora_alpha={alpha}"
        )
        return None
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _group_keys(
    tensors: dict[str, TensorInfo], problems: list[str]
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Sort adapter keys into LoRA parts per module ({"A", "B", "bias"}) and full tensors."""
    parts: dict[str, dict[str, str]] = {}
    full: dict[str, str] = {}
    for key in tensors:
        name = key.removeprefix(PEFT_PREFIX)
        if ".lora_embedding_" in name or ".lora_magnitude_vector" in name:
            problems.append(f"adapter tensor '{key}': LoRA on embeddings and DoRA magnitudes cannot be merged here")
            continue
        m = LORA_KEY.match(name)
        if m is None:  # peft saves targeted embedding/lm_head layers whole, as "<module>.base_layer.weight"
            full[re.sub(r"\.base_layer\.(weight|bias)$", r".\1", name)] = key
        elif m["ab"] == "B" and m["kind"] == "bias":
            parts.setdefault(m["module"], {})["bias"] = key
        elif m["kind"] == "weight":
            parts.setdefault(m["module"], {})[m["ab"]] = key
        else:
            problems.append(f"adapter tensor '{key}': lora_A has no bias in peft's LoRA")
    return parts, full


def _transposed(base: Checkpoint, config: dict) -> Callable[[str], bool]:
    """Whether a module's weight is stored (in, out). For families in the table this is decided
    by the base (GPT-2's Conv1D layers; its Linear lm_head is not), as peft decides it per layer
    whatever the config says; elsewhere the adapter's fan_in_fan_out is all there is."""
    spec = resolve_spec(base.config, base.names)
    if not spec.known:
        return lambda module: bool(config.get("fan_in_fan_out"))
    layout = layout_of(spec, base.config, base.names, str(base.path))
    in_layers = {n.rsplit(".", 1)[0] for layer in layout.layers for n in layer.values()}
    return lambda module: spec.transposed_linears and module in in_layers


def _pair(
    module: str, part: dict[str, str], adapter: Adapter, base: Checkpoint, transposed: bool, problems: list[str]
) -> LoraPair | None:
    if "A" not in part or "B" not in part:
        problems.append(
            f"module '{module}': the adapter has lora_{'B' if 'A' in part else 'A'} but not "
            f"lora_{'A' if 'A' in part else 'B'}"
        )
        return None
    a, b = adapter.tensors[part["A"]].shape, adapter.tensors[part["B"]].shape
    weight = f"{module}.weight"
    if weight not in base.tensors:
        problems.append(f"adapter tensor '{part['A']}' targets '{weight}', which BASE does not have")
        return None
    if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        problems.append(f"module '{module}': lora_A {list(a)} and lora_B {list(b)} are not (r, in) and (out, r)")
        return None
    want = (a[1], b[0]) if transposed else (b[0], a[1])
    have = base.tensors[weight].shape
    if have != want:
        problems.append(
            f"module '{module}': B @ A{'.T' if transposed else ''} is {list(want)}, but BASE's '{weight}' is "
            f"{list(have)}"
        )
        return None
    bias = part.get("bias")
    if bias is not None and base.tensors.get(f"{module}.bias") is None:
        problems.append(f"adapter tensor '{bias}': lora_bias needs '{module}.bias', which BASE does not have")
        return None
    scaling = _scaling(adapter.config, module, a[0], problems)
    return None if scaling is None else LoraPair(module, part["A"], part["B"], bias, scaling, transposed)


def read_adapter(adapter: str | Path, base: Checkpoint) -> Adapter:
    """Read and check a peft adapter against BASE's headers; report every problem at once.

    Raises:
        CheckpointError: missing/corrupt files, an unmergeable adapter kind, or adapter tensors
            that do not land on a BASE tensor of the right shape.
    """
    path = Path(adapter)
    config = _read_adapter_config(path)
    problems = _refusals(config)
    tensors, _ = read_header(path / ADAPTER_WEIGHTS)
    result = Adapter(path, config, tensors, {}, {})
    parts, full = _group_keys(tensors, problems)
    transposed = _transposed(base, config)
    for module, part in parts.items():
        pair = _pair(module, part, result, base, transposed(module), problems)
        if pair is not None:
            result.pairs[f"{module}.weight"] = pair
    for name, key in full.items():
        if name not in base.tensors:
            problems.append(f"adapter tensor '{key}' is not a LoRA tensor and BASE has no tensor '{name}' to replace")
        elif base.tensors[name].shape != tensors[key].shape:
            problems.append(
                f"adapter tensor '{key}' is {list(tensors[key].shape)}, BASE's '{name}' is "
                f"{list(base.tensors[name].shape)}"
            )
        else:
            result.replaced[name] = key
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise CheckpointError(
            f"{path}: the adapter cannot be merged into {base.path}:\n{lines}",
            hint="merge an adapter trained on BASE (same model and module names), with plain LoRA",
        )
    return result


def _delta_rows(pair: LoraPair, adapter: Adapter) -> Callable[[int, int], torch.Tensor]:
    """Rows start..stop-1 of scaling * B @ A (or of its transpose), in float32. A (r, in) and
    B (out, r) are read per row block, not kept: only the tensor being written holds memory."""

    def rows(start: int, stop: int) -> torch.Tensor:
        if pair.transposed:  # W is (in, out): its rows are A's columns
            a, b = adapter.load(pair.a).float()[:, start:stop], adapter.load(pair.b).float()
            return (a.T @ b.T) * pair.scaling
        a, b = adapter.load(pair.a).float(), adapter.load(pair.b, (start, stop)).float()
        return (b @ a) * pair.scaling

    return rows


def _computed(
    base: Checkpoint, name: str, adapter: Adapter, delta: Callable[[int, int], torch.Tensor] | None
) -> OutTensor:
    """BASE's tensor, or the adapter's full copy of it, plus the LoRA delta if any; float32
    arithmetic, cast back to BASE's dtype."""
    # lazy: modelsurgeon.io.dtypes imports torch/transformers
    from modelsurgeon.io.dtypes import ST_TO_TORCH

    info = base.tensors[name]
    dtype = ST_TO_TORCH[info.dtype]
    key = adapter.replaced.get(name)

    def rows(start: int, stop: int) -> torch.Tensor:
        value = base.load(name, (start, stop)) if key is None else adapter.load(key, (start, stop))
        return value.to(dtype) if delta is None else (value.float() + delta(start, stop)).to(dtype)

    return OutTensor(name, info.dtype, info.shape, info.nbytes, compute=rows)


def _delta_for(name: str, adapter: Adapter, biases: dict[str, LoraPair]) -> Callable[[int, int], torch.Tensor] | None:
    if name in adapter.pairs:
        return _delta_rows(adapter.pairs[name], adapter)
    if name in biases:
        pair = biases[name]
        return lambda a, b: adapter.load(pair.bias, (a, b)).float() * pair.scaling
    return None


def plan_tensors(base: Checkpoint, adapter: Adapter) -> list[OutTensor]:
    """BASE's tensors in order: merged and/or replaced by the adapter's copy, or byte-copied."""
    biases = {f"{p.module}.bias": p for p in adapter.pairs.values() if p.bias}
    out = []
    for name, info in base.tensors.items():
        delta = _delta_for(name, adapter, biases)
        if delta is None and name not in adapter.replaced:
            out.append(OutTensor(name, info.dtype, info.shape, info.nbytes, source=info))
        else:
            out.append(_computed(base, name, adapter, delta))
    return out


def _stage(adapter: Adapter) -> MergeLoraStage:
    """The lineage entry. No timestamp: merging the same adapter into the same base must give
    a bit-identical directory."""
    return MergeLoraStage(
        kind="merge-lora",
        adapter=str(adapter.path.resolve()),
        adapter_sha256=file_sha256(adapter.path / ADAPTER_WEIGHTS),
        adapter_config_sha256=file_sha256(adapter.path / ADAPTER_CONFIG),
        r=adapter.config.get("r"),
        lora_alpha=adapter.config.get("lora_alpha"),
        use_rslora=bool(adapter.config.get("use_rslora")),
        merged=sorted(adapter.pairs),
        replaced=sorted(adapter.replaced),
    )


def _refuse_double_merge(base: Checkpoint, stage: MergeLoraStage) -> None:
    manifest = read_manifest(base.path)
    lineage = manifest.lineage if manifest is not None else []
    if any(isinstance(s, MergeLoraStage) and s.adapter_sha256 == stage.adapter_sha256 for s in lineage):
        raise CheckpointError(
            f"{base.path} already has this adapter merged (its {MANIFEST} lineage lists it); merging again would "
            f"apply it twice",
            hint="merge the adapter into the checkpoint it was trained on, not into a merged output",
        )


def merge_lora(
    base: str | Path,
    adapter: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    max_shard_size: int = DEFAULT_MAX_SHARD,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write BASE with ADAPTER merged into OUT (atomically); return a summary.

    Raises:
        CheckpointError: BASE or ADAPTER unreadable, the adapter unmergeable or not BASE's,
            or already merged into BASE.
        OutputError: OUT exists (without force), overlaps BASE, or the disk is too small.
        ShapeError: a merged tensor is not finite.
    """
    ckpt = open_checkpoint(base)
    lora = read_adapter(adapter, ckpt)
    stage = _stage(lora)
    _refuse_double_merge(ckpt, stage)
    out = Path(out)
    check_output_path(out, ckpt.path, force)
    check_no_overlap(out, Path(adapter), "the adapter", hint="write the merged model elsewhere")
    check_free_space(out, ckpt.total_bytes)
    tensors = plan_tensors(ckpt, lora)
    announce_total(progress, sum(t.nbytes for t in tensors))
    with atomic_directory(out) as tmp:
        write_shards(tmp, tensors, max_shard_size, progress)
        source = source_record(
            ckpt.path,
            ckpt.files,
            model_type=ckpt.config.get("model_type"),
            tensors=len(ckpt.tensors),
            bytes=ckpt.total_bytes,
        )
        finish_output(tmp, ckpt.path, extend_lineage(read_manifest(ckpt.path), stage, source))
    return {
        "out": str(out),
        "merged": len(lora.pairs),
        "replaced": len(lora.replaced),
        "copied": sum(t.source is not None for t in tensors),
        "tensors": len(tensors),
        "bytes": ckpt.total_bytes,
    }
