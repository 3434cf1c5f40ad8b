"""Load a grown checkpoint so that duplicated layers share one frozen base tensor in memory.

A model grown by copying layers (surgeon.json layer map: output layer -> source layer) holds
several byte-identical copies of each source layer's tensors. `load_shared` builds the model
with empty (meta) weights, then reads each tensor once: a copy whose bytes equal an already
loaded tensor of the same source layer and suffix gets that very nn.Parameter (frozen), so the
base weights cost about the SOURCE model's memory, not the grown model's. Copies whose bytes
differ are loaded separately: a `new: zero` copy's zeroed o_proj/down_proj, or the folded
outputs of copies given different branch scales (`split` gives every copy the same scale, so
its copies stay identical and shared). Every copy keeps its own module, so peft puts a separate LoRA adapter
on each, and after training each copy's merged weight is its own: base + its own delta.

Interplay with transformers and peft:
- tie_weights(): transformers only ties lm_head to the input embedding (when
  config.tie_word_embeddings); it knows nothing of, and neither undoes nor extends, the
  sharing between layers. `load_shared` calls it once after loading.
- model.to(device or dtype) keeps the sharing (nn.Module converts each Parameter object once).
- Gradient checkpointing works unchanged: recomputation re-reads the shared tensor, which no
  step modifies. As for any frozen-base LoRA, reentrant checkpointing needs inputs that require
  grad (model.enable_input_require_grads(), which peft's prepare helpers call).
- Do not merge in place (peft merge_and_unload / merge_adapter): it adds each copy's delta into
  the one shared tensor, so every copy would get every copy's delta. Save the adapter and merge
  it with `modelsurgeon.train.merge.merge_lora` into the grown checkpoint instead. Likewise do
  not save a shared model with save_pretrained: it refuses tensors that share storage without
  being declared tied (RuntimeError).
- Shared parameters are frozen; only methods that leave the base frozen (LoRA) make sense here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.errors import CheckpointError, MissingManifestError
from modelsurgeon.io.dtypes import same_bytes
from modelsurgeon.io.reader import Checkpoint, open_checkpoint
from modelsurgeon.manifest import MANIFEST, read_manifest

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


@dataclass
class SharedInfo:
    """What sharing saved: `groups` lists the tensor names that hold one tensor (2+ each)."""

    groups: list[tuple[str, ...]] = field(default_factory=list)
    bytes_loaded: int = 0  # distinct tensors held, in the requested dtype
    bytes_shared: int = 0  # not held because a copy reuses an identical tensor
    bytes_grown: int = 0  # what holding every tensor separately would take

    @property
    def shared_names(self) -> set[str]:
        return {n for g in self.groups for n in g}


def _layer_sources(ckpt: Checkpoint) -> dict[str, tuple[int, str]]:
    """Tensor name -> (source layer, suffix) for every per-layer tensor, from surgeon.json."""
    manifest = read_manifest(ckpt.path)
    layer_map = manifest.layer_map if manifest is not None else None
    if not layer_map:
        raise MissingManifestError(
            f"{ckpt.path}: no {MANIFEST} layer map, so it is unknown which layers are copies of one another",
            hint="sharing duplicates needs a model written by `surgeon grow`; load other models normally",
        )
    spec = resolve_spec(ckpt.config, ckpt.names)
    layout = layout_of(spec, ckpt.config, ckpt.names, str(ckpt.path))
    if len(layer_map) != layout.num_layers:
        raise CheckpointError(
            f"{ckpt.path}: {MANIFEST} maps {len(layer_map)} layers but the checkpoint has {layout.num_layers}",
            hint=f"{MANIFEST} does not describe these weights; restore the one `surgeon grow` wrote",
        )
    return {
        name: (layer_map[j].source, suffix) for j, layer in enumerate(layout.layers) for suffix, name in layer.items()
    }


def _empty_model(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The model with parameters on the meta device (no memory); buffers such as RoPE
    frequencies are real, since the checkpoint does not hold them."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    from torch import nn

    module_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        module = None
    if module is not None and leaf in module._parameters:
        module._parameters[leaf] = value if isinstance(value, nn.Parameter) else nn.Parameter(value)
    elif module is not None and leaf in module._buffers:
        module._buffers[leaf] = value.data
    else:
        raise CheckpointError(
            f"checkpoint tensor '{name}' has no parameter or buffer in {type(model).__name__}",
            hint="config.json and the weights come from different models",
        )


def _load_distinct(ckpt: Checkpoint, model: nn.Module, dtype: torch.dtype, info: SharedInfo) -> dict[int, list[str]]:
    """Load each tensor, reusing an identical copy of the same source layer and suffix; return
    the names assigned to each parameter (by id)."""
    from torch import nn

    sources = _layer_sources(ckpt)
    kept: dict[tuple[int, str], list[nn.Parameter]] = {}
    users: dict[int, list[str]] = {}
    for name in ckpt.names:
        value = ckpt.load(name).to(dtype)
        info.bytes_grown += value.nbytes
        key = sources.get(name)
        twin = next((p for p in kept.get(key, []) if same_bytes(p.data, value)), None) if key else None
        if twin is None:
            twin = nn.Parameter(value, requires_grad=value.is_floating_point())
            if key is not None:
                kept.setdefault(key, []).append(twin)
            info.bytes_loaded += value.nbytes
        else:
            info.bytes_shared += value.nbytes
        users.setdefault(id(twin), []).append(name)
        _assign(model, name, twin)
    return users


def load_shared(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, SharedInfo]:
    """Load a grown checkpoint (eval mode, like from_pretrained) with identical copies of one
    source layer's tensors sharing one frozen nn.Parameter.

    Raises:
        CheckpointError: no surgeon.json layer map, one that does not fit the weights, or
            weights that do not fit config.json (unexpected or missing tensors).
    """
    ckpt = open_checkpoint(path)
    model = _empty_model(ckpt.path, dtype)
    info = SharedInfo()
    users = _load_distinct(ckpt, model, dtype, info)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    if missing:
        raise CheckpointError(
            f"{ckpt.path}: the weights lack {len(missing)} tensor(s) the model needs, e.g. {missing[:3]}",
            hint="the checkpoint is incomplete or config.json belongs to another model",
        )
    for p in model.parameters():
        if len(users.get(id(p), [])) > 1:
            p.requires_grad_(False)
            info.groups.append(tuple(users[id(p)]))
    return model.eval(), info


def distinct_storage_bytes(model: nn.Module) -> int:
    """Bytes of the distinct storages behind a model's parameters and buffers (shared
    storage counted once): what the weights really occupy."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
