"""Open a Hugging Face checkpoint directory lazily: config and tensor headers first; tensors are
loaded one at a time, on request, through safetensors' memory map."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from modelsurgeon.errors import CheckpointError
from modelsurgeon.io.st_format import TensorInfo, read_header

if TYPE_CHECKING:  # a pure byte-copy grow never needs torch
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass
class Checkpoint:
    """A checkpoint directory: its config, and every tensor's location from the headers."""

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]
    files: list[Path]
    index_path: Path | None

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def load(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Read one tensor, or only rows start..stop-1 of it (dim 0), through the memory map."""
        info = self.tensors[name]
        with safe_open(info.path, framework="pt") as fh:
            if rows is None or not info.shape:
                return fh.get_tensor(name)
            return fh.get_slice(name)[rows[0] : rows[1]]


def _read_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(
            f"{path}: no config.json",
            hint="MODEL must be a Hugging Face model directory (config.json + *.safetensors)",
        )
    return read_json_object(cfg, hint="fix or re-export config.json")


def read_json_object(path: Path, hint: str) -> dict:
    """A JSON file that must hold an object; anything else is a CheckpointError with `hint`."""
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})", hint=hint) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object", hint=hint)
    return value


def read_index(index: Path) -> tuple[list[Path], dict[str, str]]:
    """A shard index (safetensors or .bin): its shard files in order of first mention, all
    present, and its tensor -> file map."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid index ({exc!r})", hint="re-export the checkpoint") from None
    files = [index.parent / f for f in dict.fromkeys(weight_map.values())]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(
            f"{index} names shard(s) that do not exist: {', '.join(missing)}",
            hint="the download is incomplete; fetch the missing shards",
        )
    return files, weight_map


def _weight_files(path: Path) -> tuple[list[Path], Path | None, dict[str, str] | None]:
    index = path / INDEX_NAME
    if index.is_file():
        files, weight_map = read_index(index)
        return files, index, weight_map
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files, None, None
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise CheckpointError(
            f"{path}: only PyTorch pickle weights (*.bin/*.pt), no safetensors",
            hint=f"convert first: surgeon convert {path} -o {path}-safetensors",
        )
    raise CheckpointError(f"{path}: no *.safetensors weights", hint="MODEL must contain the model's weights")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read config.json and every safetensors header (no tensor data) and check they agree."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory", hint="pass the checkpoint directory as MODEL")
    config = _read_config(path)
    files, index, weight_map = _weight_files(path)
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        found, _ = read_header(f)
        for name, info in found.items():
            if name in tensors:
                raise CheckpointError(f"tensor '{name}' appears in both {tensors[name].path.name} and {f.name}")
            tensors[name] = info
    if weight_map is not None:
        absent = [n for n, f in weight_map.items() if n not in tensors or tensors[n].path.name != f]
        if absent:
            raise CheckpointError(
                f"{index}: {len(absent)} tensor(s) are not in the shard the index names, e.g. {absent[:3]}",
                hint="the index and the shards disagree; re-export the checkpoint",
            )
    return Checkpoint(path, config, tensors, files, index)
