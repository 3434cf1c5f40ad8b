"""One view over a source checkpoint in either format: config, every tensor's name, dtype and
shape (from safetensors headers or .bin pickles, no tensor data), and a loader for one tensor
or a block of its rows. Tied and shared tensors are resolved here, by rule, once."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from modelsurgeon.arch.registry import load_specs
from modelsurgeon.convert.bin_io import BinReader, BinTensor, bin_files, load_state_dict, same_view, shared_storage
from modelsurgeon.errors import CheckpointError
from modelsurgeon.io.dtypes import TORCH_TO_ST
from modelsurgeon.io.reader import INDEX_NAME, _read_config, open_checkpoint
from modelsurgeon.io.st_format import DTYPE_SIZES, TensorInfo

Rows = tuple[int, int] | None


@dataclass(frozen=True)
class SourceTensor:
    """One input tensor; `info` is its byte range when it is in a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    info: TensorInfo | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]


@dataclass
class Source:
    path: Path
    format: str  # "safetensors" or "bin"
    config: dict
    tensors: dict[str, SourceTensor]
    files: list[Path]
    loader: Callable[[str, Rows, torch.dtype | None], torch.Tensor]
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def load(self, name: str, rows: Rows = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows start..stop-1 (dim 0) of one tensor, all of it when rows is None, as `dtype`
        (default: its own) with exactly `tensor.to(dtype)`'s values."""
        return self.loader(name, rows, dtype)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


@dataclass(frozen=True)
class Tie:
    """The embedding/LM-head pair from the architecture table, and whether the config ties it."""

    embed: str | None
    lm_head: str | None
    tied: bool


def tie_of(config: dict) -> Tie:
    spec = load_specs().get(str(config.get("model_type")))
    if spec is None:  # a family outside the table: no roles known, so no tie rule applies
        return Tie(None, None, False)
    by_role = {role: f"{module}.weight" for module, role in spec.globals.items()}
    tied = config.get(spec.tie_key)
    if tied is None:  # absent from config.json: transformers uses the family's default
        from transformers import CONFIG_MAPPING

        known = spec.model_type in CONFIG_MAPPING
        tied = bool(getattr(CONFIG_MAPPING[spec.model_type](), spec.tie_key, False)) if known else False
    return Tie(by_role.get("embed"), by_role.get("lm_head"), bool(tied))


def _drop_tied_head(src: Source, tie: Tie) -> None:
    """A tied LM head is the embedding: transformers ignores a stored copy, so write none."""
    if not (tie.tied and tie.lm_head in src.tensors and tie.embed in src.tensors):
        return
    del src.tensors[tie.lm_head]
    src.dropped.append(tie.lm_head)
    src.warnings.append(
        f"{tie.lm_head} not written: config ties it to {tie.embed} (transformers ignores a stored copy)"
    )


def _load_cast(
    load: Callable[[str, Rows], torch.Tensor], name: str, rows: Rows, dtype: torch.dtype | None
) -> torch.Tensor:
    value = load(name, rows)
    return value if dtype is None else value.to(dtype)


def _open_safetensors(path: Path) -> Source:
    ckpt = open_checkpoint(path)
    tensors = {n: SourceTensor(n, i.dtype, i.shape, i) for n, i in ckpt.tensors.items()}
    return Source(path, "safetensors", ckpt.config, tensors, ckpt.files, partial(_load_cast, ckpt.load))


def _resolve_shared(file: Path, state: dict[str, torch.Tensor], tie: Tie) -> set[str]:
    """Names to skip because they alias another tensor; raise for sharing no rule explains.

    The one rule: the embedding and a tied LM head saved as one tensor under two names are
    written once, under the embedding's name."""
    skip: set[str] = set()
    for group in shared_storage(state):
        first = state[group[0]]
        identical = all(same_view(first, state[n]) for n in group[1:])
        if identical and tie.tied and set(group) == {tie.embed, tie.lm_head}:
            skip.add(tie.lm_head)
            continue
        how = "as one tensor under several names" if identical else "as different views of one buffer"
        why = (
            "config.json does not tie the embeddings"
            if identical and {tie.embed, tie.lm_head} <= set(group)
            else "only a tied embedding/LM head pair can be written once"
        )
        raise CheckpointError(
            f"{file}: tensors {', '.join(sorted(group))} share storage {how}; {why}",
            hint="if the model ties these weights, set tie_word_embeddings: true in config.json; otherwise "
            "re-save the checkpoint with save_pretrained(), which stores each weight separately",
        )
    return skip


def _open_bin(path: Path) -> Source:
    config = _read_config(path)
    files, _ = bin_files(path)
    tie = tie_of(config)
    tensors: dict[str, SourceTensor] = {}
    located: dict[str, BinTensor] = {}
    dropped: list[str] = []
    for f in files:
        state = load_state_dict(f)  # memory-mapped: names, dtypes and shapes, no tensor data
        skip = _resolve_shared(f, state, tie)
        dropped += sorted(skip)
        for name, t in state.items():
            if name in located:
                raise CheckpointError(f"tensor '{name}' appears in both {located[name].file.name} and {f.name}")
            if name in skip:
                continue
            dtype = TORCH_TO_ST[t.dtype]
            located[name] = BinTensor(name, f, dtype, tuple(t.shape))
            tensors[name] = SourceTensor(name, dtype, tuple(t.shape))
        del state
    reader = BinReader(files)
    src = Source(
        path, "bin", config, tensors, files, lambda n, rows, dtype: reader.load(located[n], rows, dtype), dropped
    )
    src.warnings += [f"{n} not written: it is the tied {tie.embed} saved under a second name" for n in dropped]
    return src


def open_source(path: str | Path) -> Source:
    """Open a checkpoint directory holding safetensors (preferred when both exist) or .bin weights."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory", hint="pass the checkpoint directory as MODEL")
    has_safetensors = (path / INDEX_NAME).is_file() or any(path.glob("*.safetensors"))
    src = _open_safetensors(path) if has_safetensors else _open_bin(path)
    _drop_tied_head(src, tie_of(src.config))
    if not src.tensors:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors", hint="MODEL must contain the model's weights")
    return src
