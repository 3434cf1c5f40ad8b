"""Copies between files done by the kernel: FICLONERANGE shares blocks on a copy-on-write
filesystem (nothing is written), copy_file_range copies without passing the bytes through
Python, and pread/pwrite is the last resort. Each step falls back to the next when the
filesystem or platform refuses it, so the same call works on XFS, btrfs, ext4, tmpfs and NFS."""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import struct
import sys
import threading

from modelsurgeon.io.layout import BLOCK, Segment

FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range), the same on every Linux arch
# "This filesystem (or this pair of files) cannot do it": fall back, do not fail. Older kernels
# answer a clone on a filesystem without reflink with EBADF or EPERM (ioctl_ficlonerange(2)).
COPY_REFUSED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
CLONE_REFUSED = COPY_REFUSED | {errno.ENOTTY, errno.EBADF, errno.EPERM}
KERNEL_CHUNK = 256 * 1024 * 1024  # per copy_file_range call, so a stop request is seen soon
COPY_CHUNK = 64 * 1024 * 1024  # per pread in the fallback
# Per pwrite: on the development VM, writing 64 MB blocks in 1 MB calls took a quarter of the
# system time and wall time of 4-64 MB calls (page-cache writes; copy_file_range was unaffected).
WRITE_CHUNK = 1 << 20
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, do not wait


@functools.cache
def _sync_file_range():
    """libc's sync_file_range (Linux; os has no binding), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # only here: nothing else needs it

    fn = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if fn is not None:  # CDLL calls release the GIL: the shard writers keep running meanwhile
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, n: int) -> None:
    """Ask the kernel to start writing bytes [offset, offset + n) of fd to disk now, without
    waiting. Copied pages otherwise stay dirty until the shard's fsync (below the
    dirty_background threshold nothing flushes them), which then writes the whole shard after
    the copy. Started per kernel copy (256 MB), writeback overlaps the copying: on the quiet 2-core
    VM the 3.4 GB ext4 splice took 1.47 s instead of 1.63 s (medians, faster in 8 of 8
    alternating rounds; scripts/ab_grow_writeback.py) and waited 0.4-0.6 s in fsync instead of
    2.5-2.9 s (summed over the writer threads). Only a head start: fsync still makes the data
    durable, so a refusal (a pipe, an old kernel) is ignored."""
    fn = _sync_file_range()
    if fn is not None and n > 0:
        fn(fd, offset, n, SYNC_FILE_RANGE_WRITE)


class Stopped(Exception):
    """Another shard's writer failed: this one stops early (its output is discarded anyway)."""


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    data = data.cast("B")
    while data:
        n = os.pwrite(fd, data[:WRITE_CHUNK], offset)
        data, offset = data[n:], offset + n


class Copier:
    """Copies segments into shards; remembers, for the whole write, whether the destination
    filesystem clones and whether copy_file_range works, so a refusal is paid for once."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.can_clone = sys.platform.startswith("linux")
        self.can_kernel_copy = hasattr(os, "copy_file_range")
        self.cloned = 0  # bytes shared rather than written
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._probe = threading.Lock()  # the first clone of a write is tried by one thread alone
        self._clone_known = False

    def segment(self, seg: Segment, dst: int) -> None:
        """Copy one segment; clone its whole blocks when the offsets are congruent."""
        with open(seg.src, "rb", buffering=0) as fh:
            src = fh.fileno()
            a, b, shift = seg.src_offset, seg.src_offset + seg.nbytes, seg.dst_offset - seg.src_offset
            mid_a, mid_b = -(-a // BLOCK) * BLOCK, b // BLOCK * BLOCK
            if seg.shareable and self.can_clone:
                self.copy(src, dst, a, mid_a - a, a + shift)
                if not self._clone(src, dst, mid_a, mid_b - mid_a, mid_a + shift):
                    self.copy(src, dst, mid_a, mid_b - mid_a, mid_a + shift)
                self.copy(src, dst, mid_b, b - mid_b, mid_b + shift)
            else:
                self.copy(src, dst, a, seg.nbytes, seg.dst_offset)

    def _clone(self, src: int, dst: int, offset: int, n: int, dst_offset: int) -> bool:
        if self._clone_known:
            return self.can_clone and self._try_clone(src, dst, offset, n, dst_offset)
        # Shard writers run in parallel: without this, each would pay for the same refusal.
        with self._probe:
            ok = self.can_clone and self._try_clone(src, dst, offset, n, dst_offset)
            self._clone_known = True
            return ok

    def _try_clone(self, src: int, dst: int, offset: int, n: int, dst_offset: int) -> bool:
        try:
            fcntl.ioctl(dst, FICLONERANGE, struct.pack("qQQQ", src, offset, n, dst_offset))
        except OSError as exc:
            if exc.errno not in CLONE_REFUSED:
                raise
            self.can_clone = False
            return False
        with self._lock:
            self.cloned += n
        return True

    def copy(self, src: int, dst: int, offset: int, n: int, dst_offset: int) -> None:
        """Copy n bytes at `offset` of src to `dst_offset` of dst (file positions untouched)."""
        while n:
            if self.stop.is_set():
                raise Stopped()
            done = self._kernel_copy(src, dst, offset, n, dst_offset) if self.can_kernel_copy else 0
            if done == 0:  # no kernel copy here (or EOF): bounded read/write
                chunk = os.pread(src, min(n, COPY_CHUNK), offset)
                if not chunk:
                    raise OSError(errno.EIO, f"unexpected end of file after byte {offset}")
                pwrite_all(dst, memoryview(chunk), dst_offset)
                done = len(chunk)
            start_writeback(dst, dst_offset, done)
            offset, dst_offset, n = offset + done, dst_offset + done, n - done

    def _kernel_copy(self, src: int, dst: int, offset: int, n: int, dst_offset: int) -> int:
        try:
            return os.copy_file_range(src, dst, min(n, KERNEL_CHUNK), offset, dst_offset)
        except OSError as exc:
            if exc.errno not in COPY_REFUSED:
                raise
            self.can_kernel_copy = False
            return 0
