"""bfloat16 <-> float32 on raw bytes, at memory bandwidth and bit-identical to torch's CPU
`tensor.to(dtype)`.

A bfloat16 is the top half of a float32, so widening is a 16-bit shift (exact, NaN payloads
kept) and narrowing drops the low half, rounding to nearest with ties to even: add 0x7FFF plus
the lowest kept bit, then shift. torch's vectorised CPU kernel writes every NaN as 0xFFFF (sign
and payload dropped), so this does too. numpy releases the GIL inside each call, so pieces of a
block are read and cast on every core at once; each piece is small enough that its temporaries
stay in cache.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from modelsurgeon.io.kcopy import pwrite_all

PIECE = 1 << 18  # elements per kernel call (1 MB of float32)
NAN_BF16 = np.uint16(0xFFFF)
EXPONENT_BF16 = 0x7F80  # all ones: inf or NaN
WORDS = {"BF16": np.uint16, "F32": np.uint32}


def widen_bf16(src: np.ndarray, out: np.ndarray) -> bool:
    """out (uint32 words of float32) = src (uint16 words of bfloat16) << 16; True if all finite."""
    np.left_shift(src, 16, out=out, dtype=np.uint32)
    return not np.any(np.bitwise_and(src, EXPONENT_BF16) == EXPONENT_BF16)


def narrow_f32(src: np.ndarray, out: np.ndarray) -> bool:
    """out (uint16 words of bfloat16) = src (uint32 words of float32) rounded to nearest even,
    NaN -> 0xFFFF; True if every result is finite (False also when a value overflowed to inf)."""
    r = np.right_shift(src, 16)
    np.bitwise_and(r, 1, out=r)
    r += 0x7FFF
    r += src  # wraps only for negative NaNs, which are replaced below
    r >>= 16
    out[...] = r
    np.putmask(out, np.bitwise_and(src, 0x7FFFFFFF) > 0x7F800000, NAN_BF16)
    return not np.any(np.bitwise_and(out, EXPONENT_BF16) == EXPONENT_BF16)


KERNELS = {("BF16", "F32"): widen_bf16, ("F32", "BF16"): narrow_f32}


def fast_cast(src_dtype: str, dst_dtype: str) -> bool:
    """Whether cast_into handles this pair (safetensors dtype codes)."""
    return (src_dtype, dst_dtype) in KERNELS


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="surgeon-cast")


def _read_into(fd: int, buf: np.ndarray, offset: int) -> None:
    view = memoryview(buf).cast("B")
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise OSError(f"unexpected end of file after byte {offset}")
        view, offset = view[n:], offset + n


_buffers = threading.local()


def _reused(slot: str, count: int, dtype: type) -> np.ndarray:
    # Each pool thread keeps its piece buffers: fresh arrays would be fresh pages for the kernel
    # to zero, and small ones stay in cache between the read, the cast and the write.
    need = count * np.dtype(dtype).itemsize
    buf = getattr(_buffers, slot, None)
    if buf is None or buf.nbytes < need:
        buf = np.empty(need, np.uint8)
        setattr(_buffers, slot, buf)
    return buf[:need].view(dtype)


def cast_into(path: Path, offset: int, count: int, src_dtype: str, dst_dtype: str, fd: int, dst_offset: int) -> bool:
    """Cast `count` elements stored at byte `offset` of `path` as `src_dtype` to `dst_dtype` and
    write them at `dst_offset` of `fd`, piece by piece on every core (read, cast and write of
    different pieces overlap). True if every value written is finite."""
    kernel, src_t, dst_t = KERNELS[(src_dtype, dst_dtype)], WORDS[src_dtype], WORDS[dst_dtype]
    src_size, dst_size = np.dtype(src_t).itemsize, np.dtype(dst_t).itemsize
    with open(path, "rb", buffering=0) as fh:

        def piece(a: int) -> bool:
            n = min(PIECE, count - a)
            src, out = _reused("src", n, src_t), _reused("out", n, dst_t)
            _read_into(fh.fileno(), src, offset + a * src_size)
            finite = kernel(src, out)
            pwrite_all(fd, memoryview(out), dst_offset + a * dst_size)
            return finite

        return all(list(_pool().map(piece, range(0, count, PIECE))))
