"""GGUF export: tensor names from gguf's own TensorNameMap, the per-family changes llama.cpp
expects (gguf_families: q/k row order, Gemma's norm offsets, GPT-2's transposed weights,
GPT-NeoX's fused qkv order), and every tensor streamed to the file a block of rows at a time.

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
    Hparams,
    add_hparams,
    attention_warnings,
    llama3_rope_factors,
    read_hparams,
    require_gguf,
)
from modelsurgeon.convert.gguf_vocab import Vocab, add_vocab, general_name, read_vocab
from modelsurgeon.convert.source import Source, SourceTensor
from modelsurgeon.errors import CheckpointError, ConvertError
from modelsurgeon.io.dtypes import ST_TO_TORCH
from modelsurgeon.io.writer import CHUNK_ELEMENTS

GGUF_DTYPES = ("F32", "F16", "BF16")
FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32}  # gguf.LlamaFileType ALL_F32, MOSTLY_F16, MOSTLY_BF16
ITEM_SIZE = {"F32": 4, "F16": 2, "BF16": 2}
# Non-persistent buffers some old .bin files carry; llama.cpp recomputes them.
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)
# How a tensor's values change on the way to llama.cpp (see gguf_families.GgufFamily).
PERMUTE, SHIFT, TRANSPOSE, REGROUP = "permute", "shift", "transpose", "regroup"
WHOLE = (TRANSPOSE, REGROUP)  # these move values across rows, so the tensor is read in one piece
GGUF_FILE = "model.gguf"


@dataclass(frozen=True)
class GgufTensor:
    name: str  # GGUF name, e.g. blk.0.attn_q.weight
    source: str | None  # the HF tensor it is made from; None for tensors made here
    shape: tuple[int, ...]  # torch order, rows first (GGUF stores the dimensions reversed)
    dtype: str  # F32, F16 or BF16
    change: str = ""  # one of PERMUTE, SHIFT, TRANSPOSE, REGROUP, or "" (copied as is)
    heads: int = 0  # the heads PERMUTE and REGROUP reorder rows by
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
    name: str  # general.name
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


def _change(hp: Hparams, name: str, shape: tuple[int, ...]) -> tuple[str, int]:
    """(change, heads) for one HF tensor of the family."""
    spec = hp.spec
    if spec.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
        return PERMUTE, hp.n_head
    if spec.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
        return PERMUTE, hp.n_head_kv
    if spec.norm_shift and name.endswith("norm.weight"):
        return SHIFT, 0
    if name.endswith(spec.transposed) and len(shape) == 2:
        return TRANSPOSE, 0
    if spec.qkv_by_head and f".{spec.qkv_by_head}." in name:
        return REGROUP, hp.n_head
    return "", 0


def _tensor(hp: Hparams, tmap, t: SourceTensor, dtype: str) -> GgufTensor | None:
    name = tmap.get_name(t.name, try_suffixes=(".weight", ".bias"))
    if name is None:
        return None
    change, heads = _change(hp, t.name, t.shape)
    if change == PERMUTE and (t.shape[0] % heads or (t.shape[0] // heads) % 2):
        raise CheckpointError(
            f"'{t.name}' has {t.shape[0]} rows, not an even number per head for {heads} heads",
            hint="config.json's head counts do not match the weights",
        )
    if change == REGROUP and t.shape[0] % (3 * heads):
        raise CheckpointError(
            f"'{t.name}' has {t.shape[0]} rows, not 3 x head_dim for each of {heads} heads",
            hint="config.json's num_attention_heads does not match the weights",
        )
    shape = tuple(reversed(t.shape)) if change == TRANSPOSE else t.shape
    # llama.cpp keeps norms and biases (1-D) in F32 whatever the file type, as its converter does.
    return GgufTensor(name, t.name, shape, dtype if len(shape) >= 2 else "F32", change, heads)


def plan_gguf(src: Source, dtype: str | None) -> GgufPlan:
    """Names, shapes and types of every GGUF tensor plus the metadata, from headers only."""
    hp = read_hparams(src.config)  # the input is checked first, whether or not gguf is installed
    vocab = read_vocab(src.path, hp.vocab_size)
    gguf = require_gguf()
    dtype = dtype or default_dtype(src)
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, hp.arch), hp.n_layers)
    tensors, unmapped = [], []
    for t in src.tensors.values():
        if t.name.endswith(SKIPPED_SUFFIXES + hp.spec.skipped):
            continue
        out = _tensor(hp, tmap, t, dtype)
        if out is None:
            unmapped.append(t.name)
        else:
            tensors.append(out)
    if unmapped:
        raise ConvertError(
            f"{len(unmapped)} tensor(s) have no GGUF name for {hp.family}, e.g. {unmapped[:3]}",
            hint="the checkpoint has weights llama.cpp's architecture does not know",
        )
    embed = next((t for t in tensors if t.name == "token_embd.weight"), None)
    if embed is not None and embed.shape[0] != hp.vocab_size:  # llama.cpp sizes the vocabulary by it
        raise CheckpointError(
            f"{embed.source} has {embed.shape[0]} rows but config.json says vocab_size={hp.vocab_size}",
            hint="fix vocab_size in config.json",
        )
    if hp.rope_type == "llama3":
        rope_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        factors = tuple(llama3_rope_factors(hp))
        tensors.append(GgufTensor(rope_name, None, (len(factors),), "F32", values=factors))
    name, name_warnings = general_name(src.path.name, vocab)
    warnings = [*attention_warnings(src.config, hp), *vocab.warnings, *name_warnings]
    return GgufPlan(hp, vocab, tensors, dtype, name, warnings)


def permute_rows(block: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half row order -> llama.cpp's interleaved order, for `heads` whole heads
    (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return block.reshape(heads, 2, block.shape[0] // heads // 2, *block.shape[1:]).swapaxes(1, 2).reshape(block.shape)


def regroup_qkv(value: torch.Tensor, heads: int) -> torch.Tensor:
    """GPT-NeoX's fused rows [head][q k v][head_dim] -> [q of every head; k; v]
    (convert_hf_to_gguf.py's GPTNeoXModel.modify_tensors)."""
    return value.reshape(heads, 3, -1, *value.shape[1:]).transpose(0, 1).reshape(value.shape)


def _row_ranges(t: GgufTensor) -> list[tuple[int, int]] | None:
    """Blocks of about CHUNK_ELEMENTS; for permuted tensors, of whole heads (the permutation
    only moves rows within a head). None: the whole tensor at once."""
    if t.change in WHOLE:
        return None
    rows = t.shape[0] if t.shape else 1
    per_row = max(1, int(np.prod(t.shape[1:]))) if t.shape else 1
    unit = rows // t.heads if t.change == PERMUTE else 1
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
            raise ConvertError(
                f"wrote {written} bytes for a tensor planned at {self.nbytes}",
                hint="this is a bug in modelsurgeon; please report it",
            )


def _changed(value: torch.Tensor, t: GgufTensor, rows: tuple[int, int] | None) -> torch.Tensor:
    if t.change == PERMUTE:
        return permute_rows(value, (rows[1] - rows[0]) * t.heads // t.shape[0])
    if t.change == SHIFT:  # in F32: norms are 1-D, which GGUF keeps in F32
        return value + 1
    if t.change == TRANSPOSE:
        return value.T
    if t.change == REGROUP:
        return regroup_qkv(value, t.heads)
    return value


def _blocks(src: Source, t: GgufTensor) -> Iterator[np.ndarray]:
    if t.source is None:
        yield np.asarray(t.values, dtype=np.float32)
        return
    for rows in _row_ranges(t) or [None]:
        value = src.load(t.source, rows, ST_TO_TORCH[t.dtype])
        yield _as_numpy(_changed(value, t, rows))


def _np_dtype(dtype: str):
    return {"F32": np.float32, "F16": np.float16, "BF16": np.int16}[dtype]


def write_gguf(
    file: Path,
    plan: GgufPlan,
    src: Source,
    progress: Callable[[int], None] | None = None,
    strings: dict[str, str] | None = None,
) -> None:
    """Write the planned GGUF file, plus `strings` as extra string keys; one block of one
    tensor is in memory at a time."""
    gguf = require_gguf()

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, plan.hparams.arch)])
    add_hparams(writer, plan.hparams, src.config, FILE_TYPES[plan.dtype], plan.name)
    add_vocab(writer, src.path, plan.vocab)
    for key, value in (strings or {}).items():
        writer.add_string(key, value)
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
