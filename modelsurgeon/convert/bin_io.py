"""PyTorch `.bin` checkpoints: read lazily and safely, written in shards.

Reading never unpickles arbitrary objects: `torch.load(weights_only=True)` only rebuilds
tensors and plain containers, and anything but a flat {name: tensor} dict is refused. Files in
the zip format (torch >= 1.6) are memory-mapped (`mmap=True`), so opening a shard reads only its
pickle and a tensor's bytes are read when that tensor (or a block of its rows) is used; legacy
non-zip files cannot be mapped and are read whole, one shard at a time.

Writing needs the whole shard in memory, because `torch.save` serialises one dict: memory is
bounded by --max-shard-size, not by the model.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from modelsurgeon.errors import CheckpointError
from modelsurgeon.io.dtypes import ST_TO_TORCH, TORCH_TO_ST
from modelsurgeon.io.layout import shard_groups
from modelsurgeon.io.reader import read_index
from modelsurgeon.io.writer import OutTensor, row_blocks

BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
SAFE_HINT = (
    "re-save the model with save_pretrained() (safetensors) where you trust its code, or ask its publisher "
    "for safetensors"
)


def bin_files(path: Path) -> tuple[list[Path], Path | None]:
    """The weight files of a .bin checkpoint directory, in index order, and the index path."""
    index = path / BIN_INDEX
    if index.is_file():
        files, _ = read_index(index)
        return files, index
    if (path / BIN_SINGLE).is_file():
        return [path / BIN_SINGLE], None
    found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    raise CheckpointError(
        f"{path}: no {BIN_SINGLE} or {BIN_INDEX}" + (f" (found {', '.join(found)})" if found else ""),
        hint=f"name a single weights file {BIN_SINGLE}, or add the {BIN_INDEX} that lists the shards",
    )


def load_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """One .bin file's flat state dict, memory-mapped when the file allows it.

    Raises CheckpointError for a file that holds anything but tensors under string names."""
    mmap = zipfile.is_zipfile(file)  # only the zip format can be mapped
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{file}: refused to unpickle it: it holds objects other than tensors ({_unpickler_reason(exc)})",
            hint=f"only plain state dicts are read (torch.load weights_only=True); {SAFE_HINT}",
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:  # torch's errors for a truncated or corrupt file
        raise CheckpointError(
            f"{file}: not a readable PyTorch file ({exc})", hint="re-download or re-export it"
        ) from None
    _check_flat(file, state)
    return state


def _unpickler_reason(exc: Exception) -> str:
    """The line of torch's long weights_only message that names the refused object."""
    found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed global.*)?$", str(exc), re.MULTILINE)
    return found.group(1).strip() if found else type(exc).__name__


def _check_flat(file: Path, state: object) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: holds a {type(state).__name__}, not a state dict", hint=SAFE_HINT)
    bad = [
        f"{k!r}: {type(v).__name__}"
        for k, v in state.items()
        if not (isinstance(k, str) and isinstance(v, torch.Tensor))
    ]
    if bad:
        raise CheckpointError(
            f"{file}: not a flat state dict of tensors; {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} "
            f"not tensors, e.g. {', '.join(bad[:3])}",
            hint="save model.state_dict() itself (not a training checkpoint wrapping it), or " + SAFE_HINT,
        )
    unknown = sorted({str(v.dtype) for v in state.values() if v.dtype not in TORCH_TO_ST})
    if unknown:
        raise CheckpointError(
            f"{file}: tensors of dtype {', '.join(unknown)} have no safetensors equivalent",
            hint="cast them to a supported dtype before converting",
        )


def shared_storage(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Groups of names whose tensors live in one storage (torch.save keeps ties and views)."""
    groups: dict[int, list[str]] = {}
    for name, t in state.items():
        storage = t.untyped_storage()
        if storage.nbytes() == 0:  # empty storages all sit at address 0; they share nothing
            continue
        groups.setdefault(storage.data_ptr(), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are the same bytes read the same way (one tensor, two names)."""
    return (a.dtype, a.shape, a.stride(), a.storage_offset()) == (b.dtype, b.shape, b.stride(), b.storage_offset())


@dataclass(frozen=True)
class BinTensor:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]


class BinReader:
    """Tensors of a .bin checkpoint, loaded on request; keeps one file open at a time, so
    reading in file order maps (or, for legacy files, holds) one shard at most."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self._open: tuple[Path, dict[str, torch.Tensor]] | None = None

    def state(self, file: Path) -> dict[str, torch.Tensor]:
        if self._open is None or self._open[0] != file:
            self._open = None  # drop the previous shard's mapping before opening the next
            self._open = (file, load_state_dict(file))
        return self._open[1]

    def load(self, t: BinTensor, rows: tuple[int, int] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        value = self.state(t.file)[t.name]
        value = value if rows is None or not t.shape else value[rows[0] : rows[1]]
        return value if dtype is None else value.to(dtype)

    def close(self) -> None:
        self._open = None


def _materialise(t: OutTensor) -> torch.Tensor:
    """The whole output tensor, filled a block of rows at a time from its compute function."""
    value = torch.empty(t.shape, dtype=ST_TO_TORCH[t.dtype])
    if not t.shape:
        return t.compute(0, 1).reshape(())
    for start, stop in row_blocks(t.shape):
        value[start:stop] = t.compute(start, stop)
    return value


def bin_shard_names(n: int) -> list[str]:
    if n == 1:
        return [BIN_SINGLE]
    return [f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin" for i in range(n)]


def write_bin_shards(
    directory: Path, tensors: list[OutTensor], max_shard_size: int, progress: Callable[[int], None] | None = None
) -> dict[str, str]:
    """Write computed tensors as HF-named .bin shards (+ index when sharded); return the weight map."""
    groups = shard_groups(tensors, max_shard_size)
    weight_map: dict[str, str] = {}
    for group, fname in zip(groups, bin_shard_names(len(groups))):
        shard = {}
        for t in group:
            shard[t.name] = _materialise(t)
            weight_map[t.name] = fname
        torch.save(shard, directory / fname)
        del shard
        if progress:
            progress(sum(t.nbytes for t in group))
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        (directory / BIN_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return weight_map
