"""Streaming, sharded safetensors writing with bounded memory, into an atomic output directory.

Every output tensor's dtype and shape are known before the first byte is written (they come
from the input headers), so each shard's header is written first and the data streamed after
it, one tensor at a time. Unchanged tensors are copied by the kernel from their source byte
range (never decoded; cloned where the filesystem shares blocks, see io.layout); computed
tensors exist in memory one row block at a time."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.errors import OutputError, ShapeError
from modelsurgeon.io.atomic import claim_temp, exit_on_signals, release_temp, tidy_leftovers
from modelsurgeon.io.kcopy import Copier, Stopped, pwrite_all
from modelsurgeon.io.layout import (
    Segment,
    Shard,
    ShardLayout,
    plan_layout,
    shard_names,
)
from modelsurgeon.io.st_format import TensorInfo

if TYPE_CHECKING:  # torch loads only when a tensor is computed: a pure copy never needs it
    import torch


def __getattr__(name: str):
    if name in ("TORCH_TO_ST", "ST_TO_TORCH"):
        from modelsurgeon.io import dtypes

        return getattr(dtypes, name)
    raise AttributeError(name)


DEFAULT_MAX_SHARD = 5 * 10**9  # bytes per weight file, as transformers' save_pretrained writes them
# Shards of byte copies written at once. The threads wait in the kernel, not on a CPU: on the
# 2-core development VM, 4 took a 3.4 GB splice from 2.3 s (one at a time) to 1.55 s, 2 to 1.7 s.
WRITERS = 4
# Computed tensors are produced a block of rows at a time, each block at most this many
# elements (64 MB in float32), so memory stays bounded even for a 128K-vocab embedding.
CHUNK_ELEMENTS = 16 * 1024 * 1024


@dataclass(frozen=True)
class OutTensor:
    """One output tensor: copied from `source` bytes, produced by `compute(start, stop)`, which
    returns rows start..stop-1 (along dim 0) of the output tensor, or written whole by
    `write(fd, offset)`, which checks what it writes itself (io.cast)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    source: TensorInfo | None = None
    compute: Callable[[int, int], torch.Tensor] | None = None
    write: Callable[[int, int], None] | None = None

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
    # lazy: modelsurgeon.io.dtypes imports torch/transformers
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


def _block_bytes(t: OutTensor, value: torch.Tensor, rows: tuple[int, int]) -> memoryview:
    import torch

    value = _checked(t, value, rows).contiguous()
    return memoryview(value.reshape(-1).view(torch.uint8).numpy())


def _write_computed(t: OutTensor, fd: int, pos: int) -> int:
    if t.write is not None:
        t.write(fd, pos)
        return pos + t.nbytes
    for rows in row_blocks(t.shape):
        data = _block_bytes(t, t.compute(*rows), rows)
        pwrite_all(fd, data, pos)
        pos += len(data)
    return pos


def _write_shard(path: Path, shard: Shard, copier: Copier, progress: Callable[[int], None] | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        pwrite_all(fd, memoryview(shard.header), 0)
        pos = len(shard.header)
        for piece in shard.pieces():
            if isinstance(piece, Segment):
                copier.segment(piece, fd)
                pos += piece.nbytes
            else:
                pos = _write_computed(piece, fd, pos)
            if progress:
                progress(piece.nbytes)
        os.fsync(fd)  # in the worker: one shard's flush overlaps the others' copies
    finally:
        os.close(fd)


def _run_parallel(jobs: list[Callable[[], None]], workers: int, copier: Copier) -> None:
    """Run the shard writers on `workers` threads; on the first failure (or Ctrl-C) tell the
    others to stop, wait for them, and raise it."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="surgeon-shard")
    try:
        futures = [pool.submit(job) for job in jobs]
        wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
        real = [e for e in errors if not isinstance(e, Stopped)]
        if real:
            raise real[0]
    except BaseException:
        copier.stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_shards(
    directory: Path,
    tensors: list[OutTensor],
    max_shard_size: int,
    progress: Callable[[int], None] | None = None,
    layout: ShardLayout | None = None,
) -> dict[str, str]:
    """Write all tensors as HF-named shards (+ index when sharded); return the weight map.

    `layout` (default: plan_layout's choice) decides shards and their order. Shards made only of
    byte copies are written in parallel (the copies run in the kernel, outside the GIL);
    computed tensors are written one shard at a time, so memory stays one row block."""
    layout = layout or plan_layout(tensors, max_shard_size)
    names = shard_names(len(layout.shards))
    copier = Copier()
    jobs = [partial(_write_shard, directory / n, s, copier, progress) for s, n in zip(layout.shards, names)]
    computed = any(t.source is None for s in layout.shards for t in s.tensors)
    workers = 1 if computed else min(len(jobs), WRITERS)
    if workers > 1:
        _run_parallel(jobs, workers, copier)
    else:
        for job in jobs:
            job()
    file_of = {t.name: n for s, n in zip(layout.shards, names) for t in s.tensors}
    weight_map = {t.name: file_of[t.name] for t in tensors}
    if len(names) > 1:
        index = {"metadata": {"total_size": layout.nbytes}, "weight_map": weight_map}
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
    tidy_leftovers(out.resolve())  # what killed writers to OUT left behind counts as free
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
    failure (exception, SIGTERM/SIGHUP/SIGINT, disk full) it is removed and `out` is left as it
    was. Leftovers of killed writers to `out` are removed first (io/atomic.py)."""
    out = out.resolve()
    tmp = claim_temp(out)
    try:
        with exit_on_signals():
            yield tmp
        release_temp(tmp)
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
