"""Which tensors go in which shard, in which order, and where each shard's data starts.

A copy-on-write filesystem (XFS with reflink, btrfs, ZFS block cloning) can share a source
file's blocks with the output instead of copying them, but only for byte ranges whose source and
destination offsets are congruent modulo the block size. A safetensors file has no holes between
tensors, so the one free variable is the header, which may be padded with spaces. The aligned
layout therefore gives each run of byte-copied tensors that is contiguous in one source file
(in source order) a shard of its own, and pads that shard's header so the run lands at its source
offset modulo BLOCK: then every whole block of the run can be cloned. Computed tensors and runs
too short to hold a block go at the ends of shards, where alignment no longer matters.

Where runs are too fragmented for that (many shards for few shared bytes), the packed layout is
the one every writer used before: tensors in order, greedily packed up to the shard size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.io.st_format import encode_header

if TYPE_CHECKING:
    from modelsurgeon.io.writer import OutTensor

BLOCK = 4096  # the block size of XFS, ext4 and btrfs on x86; a multiple of 1-2 KB blocks too
MIN_RUN = 1 << 20  # shorter runs are not worth a shard of their own
LAYOUTS = ("auto", "aligned", "packed")
METADATA = {"format": "pt"}


@dataclass(frozen=True)
class Segment:
    """One kernel copy: `nbytes` from `src` at `src_offset` to the shard at `dst_offset`."""

    src: Path
    src_offset: int
    dst_offset: int
    nbytes: int

    @property
    def shareable(self) -> int:
        """Bytes in whole blocks that a clone can share (0 unless the offsets are congruent)."""
        if (self.src_offset - self.dst_offset) % BLOCK:
            return 0
        first = -(-self.src_offset // BLOCK) * BLOCK
        last = (self.src_offset + self.nbytes) // BLOCK * BLOCK
        return max(0, last - first)


@dataclass(frozen=True)
class Shard:
    """The tensors of one output file in file order, and its encoded header."""

    tensors: tuple[OutTensor, ...]
    header: bytes

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def pieces(self) -> list[Segment | OutTensor]:
        """What to write after the header, in order: adjacent byte copies from one source file
        merged into one Segment each (one copy_file_range instead of one per tensor), and the
        computed tensors."""
        out: list[Segment | OutTensor] = []
        pos = len(self.header)
        for t in self.tensors:
            s = t.source
            last = out[-1] if out else None
            if s is None:
                out.append(t)
            elif isinstance(last, Segment) and last.src == s.path and last.src_offset + last.nbytes == s.offset:
                out[-1] = Segment(last.src, last.src_offset, last.dst_offset, last.nbytes + t.nbytes)
            else:
                out.append(Segment(s.path, s.offset, pos, t.nbytes))
            pos += t.nbytes
        return out

    @property
    def shareable(self) -> int:
        return sum(p.shareable for p in self.pieces() if isinstance(p, Segment))


@dataclass(frozen=True)
class ShardLayout:
    shards: tuple[Shard, ...]
    kind: str  # "aligned" or "packed"

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    @property
    def shareable(self) -> int:
        """Bytes a copy-on-write filesystem can share with the source instead of writing."""
        return sum(s.shareable for s in self.shards)

    @property
    def share(self) -> float:
        return self.shareable / self.nbytes if self.nbytes else 0.0


def _entries(tensors) -> list[tuple[str, str, tuple[int, ...], int]]:
    return [(t.name, t.dtype, t.shape, t.nbytes) for t in tensors]


def _shard(tensors: list[OutTensor], align_to: int | None = None) -> Shard:
    return Shard(tuple(tensors), encode_header(_entries(tensors), METADATA, align_to, BLOCK))


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


def packed_layout(tensors: list[OutTensor], max_shard_size: int) -> ShardLayout:
    return ShardLayout(tuple(_shard(g) for g in shard_groups(tensors, max_shard_size)), "packed")


def _pick(candidates: list[list[tuple[int, OutTensor]]], i: int) -> list[tuple[int, OutTensor]]:
    # Several runs can end where this tensor starts (a source layer used twice): continue the
    # one whose last tensor comes just before it in output order, so output layers stay whole.
    before = [r for r in candidates if r[-1][0] < i]
    return max(before, key=lambda r: r[-1][0]) if before else min(candidates, key=lambda r: r[-1][0])


def source_runs(tensors: list[OutTensor]) -> list[list[tuple[int, OutTensor]]]:
    """Partition the byte copies into runs, each contiguous in one source file in source order;
    items are (output index, tensor). A source tensor used twice lands in two runs."""
    copies = sorted(
        ((i, t) for i, t in enumerate(tensors) if t.source is not None),
        key=lambda it: (str(it[1].source.path), it[1].source.offset, it[1].source.nbytes, it[0]),
    )
    ends: dict[tuple[Path, int], list[list[tuple[int, OutTensor]]]] = {}
    runs: list[list[tuple[int, OutTensor]]] = []
    for i, t in copies:
        s = t.source
        waiting = ends.get((s.path, s.offset))
        if waiting:
            run = _pick(waiting, i)
            waiting.remove(run)
        else:
            run = []
            runs.append(run)
        run.append((i, t))
        ends.setdefault((s.path, s.offset + s.nbytes), []).append(run)
    return runs


def _split(run: list[tuple[int, OutTensor]], max_shard_size: int) -> list[list[tuple[int, OutTensor]]]:
    pieces: list[list[tuple[int, OutTensor]]] = [[]]
    size = 0
    for item in run:
        if pieces[-1] and size + item[1].nbytes > max_shard_size:
            pieces.append([])
            size = 0
        pieces[-1].append(item)
        size += item[1].nbytes
    return pieces


def aligned_layout(tensors: list[OutTensor], max_shard_size: int) -> ShardLayout:
    """One shard per source run (split at max_shard_size), each header padded so the run sits at
    its source offset modulo BLOCK; everything else fills shard ends, then shards of its own."""
    groups, rest = [], []
    for run in source_runs(tensors):
        if sum(t.nbytes for _, t in run) < MIN_RUN:
            rest += run
        else:
            groups += _split(run, max_shard_size)
    placed = {i for g in groups for i, _ in g}
    rest = sorted(
        rest + [(i, t) for i, t in enumerate(tensors) if t.source is None and i not in placed], key=lambda it: it[0]
    )
    groups.sort(key=lambda g: min(i for i, _ in g))  # shard numbers follow the model's order
    sizes = [sum(t.nbytes for _, t in g) for g in groups]
    tails: list[list[tuple[int, OutTensor]]] = [[] for _ in groups]
    spill: list[OutTensor] = []
    for i, t in rest:  # first fit: after a run, alignment does not matter any more
        k = next((k for k, n in enumerate(sizes) if n + t.nbytes <= max_shard_size), None)
        if k is None:
            spill.append(t)
        else:
            tails[k].append((i, t))
            sizes[k] += t.nbytes
    shards = [_shard([t for _, t in g + tail], g[0][1].source.offset) for g, tail in zip(groups, tails)]
    shards += [_shard(g) for g in shard_groups(spill, max_shard_size) if g]
    return ShardLayout(tuple(shards), "aligned")


def plan_layout(tensors: list[OutTensor], max_shard_size: int, kind: str = "auto") -> ShardLayout:
    """The shard layout for `tensors`. "auto" takes the aligned layout when it lets a
    copy-on-write filesystem share at least half of the bytes without multiplying the shards
    (at most 2x the packed layout's count + 8); otherwise the packed one."""
    packed = packed_layout(tensors, max_shard_size)
    if kind == "packed" or not any(t.source is not None for t in tensors):
        return packed
    aligned = aligned_layout(tensors, max_shard_size)
    if kind == "aligned":
        return aligned
    few_shards = len(aligned.shards) <= 2 * len(packed.shards) + 8
    worth_it = aligned.shareable >= max(packed.shareable + 1, aligned.nbytes / 2)
    return aligned if few_shards and worth_it else packed


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
