"""`surgeon convert`: one entry point from a checkpoint directory to safetensors, .bin or GGUF
(a directory, or for GGUF also the one .gguf file llama.cpp users expect).

Everything is planned from headers (or memory-mapped pickles) first: output names, dtypes,
shards and sizes, which is what --dry-run prints. The write then streams one tensor (or block
of rows) at a time into a temporary sibling of OUT that replaces OUT in one rename."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelsurgeon.convert.bin_io import bin_shard_names, write_bin_shards
from modelsurgeon.convert.gguf_out import GGUF_FILE, GgufPlan, plan_gguf, write_gguf
from modelsurgeon.convert.options import DTYPE_NAMES, gguf_file, parse_dtype, parse_format
from modelsurgeon.convert.safetensors_out import converted_config, out_tensors
from modelsurgeon.convert.source import Source, open_source
from modelsurgeon.errors import ConvertError
from modelsurgeon.io.layout import plan_layout, shard_groups
from modelsurgeon.io.writer import (
    DEFAULT_MAX_SHARD,
    OutTensor,
    atomic_directory,
    atomic_file,
    check_free_space,
    check_output_path,
    shard_names,
    write_shards,
)
from modelsurgeon.manifest import (
    ConvertStage,
    Manifest,
    extend_lineage,
    finish_output,
    now,
    read_manifest,
    source_record,
    tool_version,
)
from modelsurgeon.progress import announce_total

MANIFEST_KEY = "modelsurgeon.manifest"  # a single .gguf file's surgeon.json, as a JSON string


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
    single_file: str | None = None  # GGUF written as this one file, not into a directory

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
            return [(self.single_file or GGUF_FILE, len(self.gguf.tensors), self.gguf.bytes_out)]
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
    model: str | Path,
    to: str | None = None,
    dtype: str | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD,
    out: str | Path | None = None,
) -> Conversion:
    """Validate the request and plan the output from the source's headers. `to` None: GGUF when
    `out` is named *.gguf, else safetensors; GGUF to an `out` named *.gguf is that one file.

    Raises ConvertError (unknown format or dtype, family or tokenizer GGUF cannot take) and
    CheckpointError (unreadable source, unsafe pickle, storage sharing no rule explains)."""
    out = Path(out) if out is not None else None
    to, code = parse_format(to, out), parse_dtype(dtype)
    if out is not None and to != "gguf" and gguf_file(out):
        raise ConvertError(f"output {out} is named .gguf but --to is {to}", hint="pass --to gguf, or another name")
    if max_shard_size <= 0:
        raise ConvertError(f"max shard size must be positive, got {max_shard_size}", hint="use e.g. 5GB or 500MB")
    src = open_source(model)
    conv = Conversion(src, to, code, max_shard_size, warnings=list(src.warnings))
    if to == "gguf":
        conv.gguf = plan_gguf(src, code)
        conv.config = dict(src.config)
        conv.single_file = out.name if out is not None and gguf_file(out) else None
        conv.warnings += conv.gguf.warnings
    else:
        # .bin shards are built from tensor values, so even unchanged tensors are read, not byte-copied.
        conv.tensors = out_tensors(src, code, copy_bytes=to == "safetensors")
        conv.config = converted_config(src.config, code)
    return conv


def _stage(conv: Conversion) -> ConvertStage:
    return ConvertStage(
        kind="convert",
        from_=conv.source.format,
        to=conv.to,
        dtype=conv.dtype_name,
        created=now(),
        version=tool_version(),
        tensors=conv.tensor_count,
        bytes=conv.bytes_out,
        files=[name for name, _, _ in conv.shards()],
        dropped=conv.source.dropped,
    )


def _manifest(conv: Conversion) -> Manifest:
    """MODEL's manifest with this conversion appended to its lineage."""
    src = conv.source
    st_files = src.files if src.format == "safetensors" else None
    origin = source_record(
        src.path,
        st_files,
        format=src.format,
        model_type=src.config.get("model_type"),
        tensors=len(src.tensors),
        bytes=src.total_bytes,
    )
    return extend_lineage(read_manifest(src.path), _stage(conv), origin)


def _finish(conv: Conversion, tmp: Path) -> None:
    """Everything but the weights: tokenizer and other files, config.json, surgeon.json, and
    the model card (a format change leaves it true)."""
    skipped = finish_output(tmp, conv.source.path, _manifest(conv), conv.config)
    if skipped:
        conv.warnings.append(f"sub-directories not copied (they may hold stale weights): {skipped}")


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
    to: str | None = None,
    dtype: str | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Conversion:
    """Convert a checkpoint to `to` (safetensors, bin, gguf; None: see prepare_conversion),
    optionally to another dtype (float32, bfloat16, float16), writing `out` atomically. Raises as
    prepare_conversion, and OutputError when OUT exists without `force`, overlaps MODEL, or does
    not fit on disk."""
    out = Path(out)
    conv = prepare_conversion(model, to, dtype, max_shard_size, out)
    check_output_path(out, conv.source.path, force, is_file=conv.single_file is not None)
    check_free_space(out, conv.bytes_out)
    announce_total(progress, conv.bytes_out)
    if conv.single_file is not None:
        # No directory for config.json and surgeon.json: the lineage travels inside the file.
        with atomic_file(out) as tmp:
            write_gguf(tmp, conv.gguf, conv.source, progress, {MANIFEST_KEY: json.dumps(_manifest(conv).to_json())})
        return conv
    with atomic_directory(out) as tmp:
        _write_weights(conv, tmp, progress)
        _finish(conv, tmp)
    return conv
