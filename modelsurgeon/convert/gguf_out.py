"""GGUF export: tensor names from gguf's own TensorNameMap, llama.cpp's q/k row order for the
llama architecture, and every tensor streamed to the file a block of rows at a time.

GGUFWriter takes all tensor infos first (add_tensor_info), then writes header, metadata and
tensor infos, then the data of each tensor in order (write_tensor_data). That last call only
reads `.nbytes` and calls `.tofile(fp)` on what it is given, so a small object that produces
the rows on demand stands in for the array, and no tensor is ever held whole."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from modelsurgeon.convert.gguf_meta import (
    PERMUTED_QK, Hparams, add_hparams, attention_warnings, llama3_rope_factors, read_hparams, require_gguf,
)
from modelsurgeon.convert.gguf_vocab import Vocab, add_vocab, read_vocab
from modelsurgeon.convert.source import Source, SourceTensor
from modelsurgeon.errors import CheckpointError, ConvertError
from modelsurgeon.io.dtypes import ST_TO_TORCH
from modelsurgeon.io.writer import CHUNK_ELEMENTS

GGUF_DTYPES = ("F32", "F16", "BF16")
FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32}  # gguf.LlamaFileType ALL_F32, MOSTLY_F16, MOSTLY_BF16
ITEM_SIZE = {"F32": 4, "F16": 2, "BF16": 2}
# Non-persistent buffers some old .bin files carry; llama.cpp recomputes them.
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)
GGUF_FILE = "model.gguf"


@dataclass(frozen=True)
class GgufTensor:
    name: str  # GGUF name, e.g. blk.0.attn_q.weight
    source: str | None  # the HF tensor it is made from; None for tensors made here
    shape: tuple[int, ...]  # torch order, rows first (GGUF stores the dimensions reversed)
    dtype: str  # F32, F16 or BF16
    heads: int = 0  # > 0: permute rows per head into llama.cpp's rope order
    values: tuple[float, ...] = ()  # the data of a tensor made here

    @property
    def nbytes(self) -> int:
        n = ITEM_SIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass
class GgufPlan:
    hparams: Hparams
    vocab: Vocab
    tensors: list[GgufTensor]
    dtype: str
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_out(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def default_dtype(src: Source) -> str:
    """The dtype most of the matrix bytes are in, when that is one GGUF holds; else F32."""
    by_bytes = Counter()
    for t in src.tensors.values():
        if len(t.shape) >= 2:
            by_bytes[t.dtype] += t.nbytes
    common = by_bytes.most_common(1)[0][0] if by_bytes else "F32"
    return common if common in GGUF_DTYPES else "F32"


def _heads(hp: Hparams, name: str) -> int:
    if hp.family not in PERMUTED_QK:
        return 0
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return hp.n_head
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return hp.n_head_kv
    return 0


def _tensor(hp: Hparams, tmap, t: SourceTensor, dtype: str) -> GgufTensor | None:
    name = tmap.get_name(t.name, try_suffixes=(".weight", ".bias"))
    if name is None:
        return None
    heads = _heads(hp, t.name)
    if heads and (t.shape[0] % heads or (t.shape[0] // heads) % 2):
        raise CheckpointError(f"'{t.name}' has {t.shape[0]} rows, not an even number per head for {heads} heads",
                              hint="config.json's head counts do not match the weights")
    # llama.cpp keeps norms and biases (1-D) in F32 whatever the file type, as its converter does.
    return GgufTensor(name, t.name, t.shape, dtype if len(t.shape) >= 2 else "F32", heads)


def plan_gguf(src: Source, dtype: str | None) -> GgufPlan:
    """Names, shapes and types of every GGUF tensor plus the metadata, from headers only."""
    hp = read_hparams(src.config)  # the input is checked first, whether or not gguf is installed
    vocab = read_vocab(src.path, hp.vocab_size)
    gguf = require_gguf()
    dtype = dtype or default_dtype(src)
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, hp.arch), hp.n_layers)
    tensors, unmapped = [], []
    for t in src.tensors.values():
        if t.name.endswith(SKIPPED_SUFFIXES):
            continue
        out = _tensor(hp, tmap, t, dtype)
        if out is None:
            unmapped.append(t.name)
        else:
            tensors.append(out)
    if unmapped:
        raise ConvertError(f"{len(unmapped)} tensor(s) have no GGUF name for {hp.family}, e.g. {unmapped[:3]}",
                           hint="the checkpoint has weights llama.cpp's architecture does not know")
    embed = next((t for t in tensors if t.name == "token_embd.weight"), None)
    if embed is not None and embed.shape[0] != hp.vocab_size:  # llama.cpp sizes the vocabulary by it
        raise CheckpointError(f"{embed.source} has {embed.shape[0]} rows but config.json says vocab_size={hp.vocab_size}",
                              hint="fix vocab_size in config.json")
    if hp.rope_type == "llama3":
        rope_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        factors = tuple(llama3_rope_factors(hp))
        tensors.append(GgufTensor(rope_name, None, (len(factors),), "F32", values=factors))
    return GgufPlan(hp, vocab, tensors, dtype, [*attention_warnings(src.config), *vocab.warnings])


def permute_rows(block: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half row order -> llama.cpp's interleaved order, for `heads` whole heads
    (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return block.reshape(heads, 2, block.shape[0] // heads // 2, *block.shape[1:]).swapaxes(1, 2).reshape(block.shape)


def _row_ranges(t: GgufTensor) -> list[tuple[int, int]]:
    """Blocks of about CHUNK_ELEMENTS; for permuted tensors, of whole heads (the permutation
    only moves rows within a head)."""
    rows = t.shape[0] if t.shape else 1
    per_row = max(1, int(np.prod(t.shape[1:]))) if t.shape else 1
    unit = rows // t.heads if t.heads else 1
    step = max(1, CHUNK_ELEMENTS // (per_row * unit)) * unit
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def _as_numpy(value: torch.Tensor) -> np.ndarray:
    value = value.contiguous()
    return value.view(torch.int16).numpy() if value.dtype == torch.bfloat16 else value.numpy()  # numpy has no bfloat16


class _Streamed:
    """What GGUFWriter.write_tensor_data is handed instead of an array: the tensor's bytes,
    produced a block of rows at a time."""

    def __init__(self, nbytes: int, blocks: Callable[[], Iterator[np.ndarray]]) -> None:
        self.nbytes = nbytes
        self._blocks = blocks

    def tofile(self, fp) -> None:
        written = 0
        for block in self._blocks():
            fp.write(block.data.cast("B"))
            written += block.nbytes
        if written != self.nbytes:
            raise ConvertError(f"wrote {written} bytes for a tensor planned at {self.nbytes}",
                               hint="this is a bug in modelsurgeon; please report it")


def _blocks(src: Source, t: GgufTensor) -> Iterator[np.ndarray]:
    if t.source is None:
        yield np.asarray(t.values, dtype=np.float32)
        return
    for rows in _row_ranges(t):
        value = src.load(t.source, rows, ST_TO_TORCH[t.dtype])
        if t.heads:
            value = permute_rows(value, (rows[1] - rows[0]) * t.heads // t.shape[0])
        yield _as_numpy(value)


def _np_dtype(dtype: str):
    return {"F32": np.float32, "F16": np.float16, "BF16": np.int16}[dtype]


def write_gguf(file: Path, plan: GgufPlan, src: Source, progress: Callable[[int], None] | None = None) -> None:
    """Write the planned GGUF file; one block of one tensor is in memory at a time."""
    gguf = require_gguf()

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, plan.hparams.arch)])
    add_hparams(writer, plan.hparams, FILE_TYPES[plan.dtype], src.path.name)
    add_vocab(writer, src.path, plan.vocab)
    for t in plan.tensors:
        raw = getattr(gguf.GGMLQuantizationType, t.dtype)
        writer.add_tensor_info(t.name, t.shape, np.dtype(_np_dtype(t.dtype)), t.nbytes, raw_dtype=raw)
    try:
        writer.write_header_to_file(path=file)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in plan.tensors:
            writer.write_tensor_data(_Streamed(t.nbytes, lambda t=t: _blocks(src, t)))
            if progress:
                progress(t.nbytes)
    finally:
        writer.close()
