"""The safetensors file layout, read and written directly so that tensors can be planned from
headers alone and copied byte-for-byte: an 8-byte little-endian header length N, N bytes of
JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
Offsets are relative to the first byte after the header."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from modelsurgeon.errors import CheckpointError

# hand-laid table: one row per byte width (fmt: skip below)
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
ALIGN = 8  # headers are space-padded so that the data starts 8-byte aligned


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: `offset` is absolute in `path`."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a valid safetensors file: {what}",
        hint="the file is truncated or corrupt; re-download or re-export it",
    )


def _entry(path: Path, name: str, raw: object, base: int, data_len: int) -> TensorInfo:
    if not isinstance(raw, dict) or not {"dtype", "shape", "data_offsets"} <= raw.keys():
        raise _bad(path, f"tensor '{name}' header entry lacks dtype/shape/data_offsets")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise _bad(path, f"tensor '{name}' has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _bad(path, f"tensor '{name}' has invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise _bad(path, f"tensor '{name}' has invalid data_offsets {offsets!r}")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if not 0 <= begin <= end or end - begin != nbytes:
        raise _bad(path, f"tensor '{name}' offsets {offsets} do not span {nbytes} bytes for {dtype}{shape}")
    if end > data_len:
        raise _bad(path, f"tensor '{name}' ends at byte {end} past the end of the data ({data_len} bytes)")
    return TensorInfo(name, path, dtype, tuple(shape), base + begin, nbytes)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate one file's header; return (tensors by name, __metadata__)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _bad(path, f"file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n > size - 8:
            raise _bad(path, f"header length {n} exceeds the file size ({size} bytes)")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad(path, "header JSON is not an object")
    meta = header.pop("__metadata__", None) or {}
    base, data_len = 8 + n, size - 8 - n
    tensors = {name: _entry(path, name, raw_e, base, data_len) for name, raw_e in header.items()}
    return tensors, meta


def encode_header(
    entries: list[tuple[str, str, tuple[int, ...], int]],
    metadata: dict[str, str],
    align_to: int | None = None,
    block: int = 4096,
) -> bytes:
    """Header bytes (length prefix included) for tensors laid out back to back in this order.

    `entries` are (name, dtype, shape, nbytes). With `align_to`, the header is padded so that the
    data starts at an offset congruent to `align_to` modulo `block` (see io.layout)."""
    header: dict[str, object] = {"__metadata__": metadata}
    pos = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    body = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if align_to is None:
        body += b" " * (-(8 + len(body)) % ALIGN)
    else:
        body += b" " * ((align_to - 8 - len(body)) % block)
    return struct.pack("<Q", len(body)) + body
