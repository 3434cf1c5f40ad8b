"""Streaming, sharded safetensors writing with bounded memory, into an atomic output directory.

Every output tensor's dtype and shape are known before the first byte is written (they come
from the input headers), so each shard's header is written first and the data streamed after
it, one tensor at a time. Unchanged tensors are copied by the kernel from their source byte
range (never decoded); computed tensors exist in memory one at a time."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.errors import OutputError, ShapeError
from modelsurgeon.io.st_format import TensorInfo, encode_header

if TYPE_CHECKING:  # torch loads only when a tensor is computed: a pure copy never needs it
    import torch


def __getattr__(name: str):
    if name in ("TORCH_TO_ST", "ST_TO_TORCH"):
        from modelsurgeon.io import dtypes

        return getattr(dtypes, name)
    raise AttributeError(name)


DEFAULT_MAX_SHARD = 5 * 10**9  # bytes per weight file, as transformers' save_pretrained writes them
COPY_CHUNK = 64 * 1024 * 1024
# Computed tensors are produced a block of rows at a time, each block at most this many
# elements (64 MB in float32), so memory stays bounded even for a 128K-vocab embedding.
CHUNK_ELEMENTS = 16 * 1024 * 1024


@dataclass(frozen=True)
class OutTensor:
    """One output tensor: copied from `source` bytes, or produced by `compute(start, stop)`,
    which returns rows start..stop-1 (along dim 0) of the output tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    source: TensorInfo | None = None
    compute: Callable[[int, int], torch.Tensor] | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def row_blocks(shape: tuple[int, ...], budget: int | None = None) -> list[tuple[int, int]]:
    """Row ranges along dim 0, each at most `budget` elements (at least one row)."""
    budget = budget or CHUNK_ELEMENTS
    if not shape:
        return [(0, 1)]
    rows = shape[0]
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, budget // per_row)
    return [(a, min(a + step, rows)) for a in range(0, rows, step)] or [(0, 0)]


def shard_groups(tensors: list[OutTensor], max_shard_size: int) -> list[list[OutTensor]]:
    """Greedy, order-preserving packing into shards of at most max_shard_size bytes
    (a single larger tensor gets a shard of its own)."""
    groups: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    return groups


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _copy_range(src: TensorInfo, fd: int) -> None:
    with open(src.path, "rb", buffering=0) as fh:
        offset, left = src.offset, src.nbytes
        while left:
            try:
                n = os.copy_file_range(fh.fileno(), fd, min(left, 1 << 30), offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                n = 0
            if n == 0:  # no kernel copy here (or EOF): fall back to bounded read/write
                chunk = os.pread(fh.fileno(), min(left, COPY_CHUNK), offset)
                if not chunk:
                    raise OSError(errno.EIO, f"{src.path}: unexpected end of file")
                _write_all(fd, memoryview(chunk))
                n = len(chunk)
            offset += n
            left -= n


def all_finite(value: torch.Tensor) -> bool:
    """torch.isfinite(value).all(), about 40x faster on CPU: a sum is finite only when every
    element is (inf and NaN propagate), so the exact, slow check runs only when the sum
    overflowed or something is wrong."""
    import torch

    if value.element_size() == 1:  # float8 has no sum/isfinite kernels; float16 holds it exactly
        value = value.to(torch.float16)
    return bool(torch.isfinite(value.sum())) or bool(torch.isfinite(value).all())


def _checked(t: OutTensor, value: torch.Tensor, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Refuse a computed block whose dtype/shape differ from the plan, or that is not finite."""
    from modelsurgeon.io.dtypes import TORCH_TO_ST

    got = TORCH_TO_ST.get(value.dtype)
    want = t.shape if rows is None or not t.shape else (rows[1] - rows[0], *t.shape[1:])
    if got != t.dtype or tuple(value.shape) != want:
        raise ShapeError(
            f"computed tensor '{t.name}' is {got}{tuple(value.shape)}, planned {t.dtype}{want}",
            hint="this is a bug in modelsurgeon; please report it with the plan",
        )
    if value.is_floating_point() and not all_finite(value):
        raise ShapeError(f"computed tensor '{t.name}' has NaN or inf values", hint="check the plan's scales")
    return value


def _write_tensor(t: OutTensor, fd: int) -> None:
    if t.source is not None:
        _copy_range(t.source, fd)
        return
    import torch

    for rows in row_blocks(t.shape):
        value = _checked(t, t.compute(*rows), rows).contiguous()
        _write_all(fd, memoryview(value.reshape(-1).view(torch.uint8).numpy()))


def write_shards(
    directory: Path,
    tensors: list[OutTensor],
    max_shard_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """Write all tensors as HF-named shards (+ index when sharded); return the weight map."""
    groups = shard_groups(tensors, max_shard_size)
    names = shard_names(len(groups))
    weight_map: dict[str, str] = {}
    for group, fname in zip(groups, names):
        header = encode_header([(t.name, t.dtype, t.shape, t.nbytes) for t in group], {"format": "pt"})
        fd = os.open(directory / fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, memoryview(header))
            for t in group:
                _write_tensor(t, fd)
                weight_map[t.name] = fname
                if progress:
                    progress(t.nbytes)
            os.fsync(fd)
        finally:
            os.close(fd)
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


def check_no_overlap(out: Path, other: Path, what: str = "the input", hint: str = "") -> None:
    """Refuse OUT equal to or inside `other` (or `other` inside OUT): replacing OUT would destroy it."""
    out_r, other_r = out.resolve(), other.resolve()
    if out_r == other_r or other_r in out_r.parents or out_r in other_r.parents:
        raise OutputError(
            f"output {out} overlaps {what} {other}",
            hint=hint or "choose an output directory outside the model directory",
        )


def check_output_path(out: Path, model: Path, force: bool, is_file: bool = False) -> None:
    """Refuse OUT equal to or inside MODEL (or MODEL inside OUT), and an existing OUT without force.
    `is_file`: OUT is one file, which --force may replace (a directory is always a directory)."""
    check_no_overlap(out, model)
    if out.exists() and not force:
        raise OutputError(f"output {out} already exists", hint="choose a new path, or pass --force to replace it")
    if out.exists() and out.is_dir() == is_file:
        kind = "a directory" if is_file else "not a directory"
        raise OutputError(f"output {out} exists and is {kind}", hint="remove it or choose another path")


def check_free_space(out: Path, needed: int) -> None:
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise OutputError(
            f"not enough disk space in {parent}: need {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
            hint="free some space or write the output elsewhere",
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling path of the file `out`; on success it replaces `out` in one
    rename, on any failure it is removed and `out` is left as it was."""
    out = out.resolve()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; on success it replaces `out` in one rename, on any
    failure (exception, Ctrl-C, disk full) it is removed and `out` is left as it was."""
    out = out.resolve()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
