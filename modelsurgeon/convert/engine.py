"""`surgeon convert`: one entry point from a checkpoint directory to safetensors, .bin or GGUF.

Everything is planned from headers (or memory-mapped pickles) first: output names, dtypes,
shards and sizes, which is what --dry-run prints. The write then streams one tensor (or block
of rows) at a time into a temporary sibling of OUT that replaces OUT in one rename."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from modelsurgeon.convert.bin_io import bin_shard_names, write_bin_shards
from modelsurgeon.convert.gguf_out import GGUF_FILE, GgufPlan, plan_gguf, write_gguf
from modelsurgeon.convert.options import DTYPE_NAMES, parse_dtype, parse_format
from modelsurgeon.convert.safetensors_out import converted_config, out_tensors
from modelsurgeon.convert.source import Source, open_source
from modelsurgeon.errors import ConvertError
from modelsurgeon.io.hf_files import copy_extra_files, write_json
from modelsurgeon.io.layout import plan_layout
from modelsurgeon.io.writer import OutTensor, atomic_directory, check_free_space, check_output_path, shard_groups, shard_names, write_shards
from modelsurgeon.manifest import MANIFEST, extend_lineage, tool_version

DEFAULT_MAX_SHARD = 5 * 10**9


@dataclass
class Conversion:
    """What a conversion writes, known before the first byte is written."""

    source: Source
    to: str
    dtype: str | None  # safetensors dtype code asked for; None keeps each tensor's dtype
    max_shard_size: int
    tensors: list[OutTensor] = field(default_factory=list)  # safetensors and .bin outputs
    gguf: GgufPlan | None = None
    config: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_out(self) -> int:
        return self.gguf.bytes_out if self.gguf is not None else sum(t.nbytes for t in self.tensors)

    @property
    def dtype_name(self) -> str | None:
        """The dtype asked for (for GGUF, the one chosen), or None when every dtype is kept."""
        code = self.gguf.dtype if self.gguf is not None else self.dtype
        return DTYPE_NAMES[code] if code else None

    @property
    def tensor_count(self) -> int:
        return len(self.gguf.tensors) if self.gguf is not None else len(self.tensors)

    def shards(self) -> list[tuple[str, int, int]]:
        """(file name, tensors, bytes) of every weight file."""
        if self.gguf is not None:
            return [(GGUF_FILE, len(self.gguf.tensors), self.gguf.bytes_out)]
        if self.to == "bin":
            groups = shard_groups(self.tensors, self.max_shard_size)
        else:  # the layout write_shards will choose (io.layout)
            groups = [list(s.tensors) for s in plan_layout(self.tensors, self.max_shard_size).shards]
        names = (bin_shard_names if self.to == "bin" else shard_names)(len(groups))
        return [(n, len(g), sum(t.nbytes for t in g)) for n, g in zip(names, groups)]

    def dtype_changes(self) -> Counter:
        """{(input dtype, output dtype): tensor count}."""
        before = self.source.tensors
        if self.gguf is not None:
            return Counter((before[t.source].dtype, t.dtype) for t in self.gguf.tensors if t.source is not None)
        return Counter((before[t.name].dtype, t.dtype) for t in self.tensors)


def prepare_conversion(
    model: str | Path, to: str = "safetensors", dtype: str | None = None, max_shard_size: int = DEFAULT_MAX_SHARD
) -> Conversion:
    """Validate the request and plan the output from the source's headers.

    Raises ConvertError (unknown format or dtype, family or tokenizer GGUF cannot take) and
    CheckpointError (unreadable source, unsafe pickle, storage sharing no rule explains)."""
    to, code = parse_format(to), parse_dtype(dtype)
    if max_shard_size <= 0:
        raise ConvertError(f"max shard size must be positive, got {max_shard_size}", hint="use e.g. 5GB or 500MB")
    src = open_source(model)
    conv = Conversion(src, to, code, max_shard_size, warnings=list(src.warnings))
    if to == "gguf":
        conv.gguf = plan_gguf(src, code)
        conv.config = dict(src.config)
        conv.warnings += conv.gguf.warnings
    else:
        # .bin shards are built from tensor values, so even unchanged tensors are read, not byte-copied.
        conv.tensors = out_tensors(src, code, copy_bytes=to == "safetensors")
        conv.config = converted_config(src.config, code)
    return conv


def _stage(conv: Conversion) -> dict:
    return {
        "kind": "convert",
        "from": conv.source.format,
        "to": conv.to,
        "dtype": conv.dtype_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": tool_version(),
        "tensors": conv.tensor_count,
        "bytes": conv.bytes_out,
        "files": [name for name, _, _ in conv.shards()],
        "dropped": conv.source.dropped,
    }


def _finish(conv: Conversion, tmp: Path) -> None:
    """Everything but the weights: tokenizer and other files, config.json, surgeon.json."""
    src = conv.source
    skipped = copy_extra_files(src.path, tmp)
    if skipped:
        conv.warnings.append(f"sub-directories not copied (they may hold stale weights): {skipped}")
    if (src.path / "README.md").is_file():  # a format change leaves the model card true
        shutil.copy2(src.path / "README.md", tmp / "README.md")
    write_json(tmp / "config.json", conv.config)
    origin = {"path": str(src.path.resolve()), "format": src.format, "model_type": src.config.get("model_type"),
              "tensors": len(src.tensors), "bytes": src.total_bytes}
    write_json(tmp / MANIFEST, extend_lineage(src.path, _stage(conv), origin))


def _write_weights(conv: Conversion, tmp: Path, progress: Callable[[int], None] | None) -> None:
    if conv.gguf is not None:
        write_gguf(tmp / GGUF_FILE, conv.gguf, conv.source, progress)
    elif conv.to == "bin":
        write_bin_shards(tmp, conv.tensors, conv.max_shard_size, progress)
    else:
        write_shards(tmp, conv.tensors, conv.max_shard_size, progress)


def convert(
    model: str | Path,
    out: str | Path,
    to: str = "safetensors",
    dtype: str | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Conversion:
    """Convert a checkpoint to `to` (safetensors, bin, gguf), optionally to another dtype
    (float32, bfloat16, float16), writing `out` atomically. Raises as prepare_conversion, and
    OutputError when OUT exists without `force`, overlaps MODEL, or does not fit on disk."""
    conv = prepare_conversion(model, to, dtype, max_shard_size)
    out = Path(out)
    check_output_path(out, conv.source.path, force)
    check_free_space(out, conv.bytes_out)
    with atomic_directory(out) as tmp:
        _write_weights(conv, tmp, progress)
        _finish(conv, tmp)
    return conv
