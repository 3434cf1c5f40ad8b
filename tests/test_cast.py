"""The numpy bfloat16 <-> float32 kernels give torch's `tensor.to(dtype)` bit for bit (NaN with
payloads and either sign, infinities, subnormals, rounding ties), in blocks read and cast on
several threads, and `surgeon convert` uses them with the same refusals as before."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from modelsurgeon.convert.engine import convert
from modelsurgeon.errors import ConvertError
from modelsurgeon.io import cast


def f32_specials() -> np.ndarray:
    """float32 bit patterns for every case the rounding can get wrong."""
    rng = np.random.default_rng(0)
    # hand-laid table: the special float32 words in rows (fmt: skip below)
    words = [
        rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),  # every class, uniformly by bits
        np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF,
                  0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x00000000, 0x80000000], dtype=np.uint32),
    ]  # fmt: skip
    nan_payloads = rng.integers(1, 2**23, 1000, dtype=np.uint32)
    words += [0x7F800000 | nan_payloads, 0xFF800000 | nan_payloads]  # NaN, both signs, many payloads
    subnormal = rng.integers(1, 2**23, 1000, dtype=np.uint32)
    words += [subnormal, 0x80000000 | subnormal]
    kept = rng.integers(0, 2**16, 2000, dtype=np.uint32) << 16
    words += [kept | 0x8000, kept | 0x7FFF, kept | 0x8001]  # exact ties (odd and even kept bit), either side
    return np.concatenate(words)


def torch_bits(words: np.ndarray, src: torch.dtype, dst: torch.dtype) -> np.ndarray:
    signed = {torch.float32: torch.int32, torch.bfloat16: torch.int16}
    t = torch.from_numpy(words.view(np.int32 if src == torch.float32 else np.int16).copy()).view(src)
    return t.to(dst).view(signed[dst]).numpy().view(np.uint32 if dst == torch.float32 else np.uint16)


def test_narrowing_is_torch_bit_for_bit():
    words = f32_specials()
    out = np.empty(len(words), np.uint16)
    finite = cast.narrow_f32(words, out)
    np.testing.assert_array_equal(out, torch_bits(words, torch.float32, torch.bfloat16))
    assert not finite  # NaN and inf among them
    ties = np.array([0x3F808000, 0x3F818000], dtype=np.uint32)  # 1.00390625 -> 1.0 (even), next -> up
    cast.narrow_f32(ties, out[:2])
    assert out[:2].tolist() == [0x3F80, 0x3F82]


def test_widening_is_torch_bit_for_bit_on_every_bfloat16():
    words = np.arange(2**16, dtype=np.uint32).astype(np.uint16)  # all of them, NaN payloads included
    out = np.empty(len(words), np.uint32)
    assert not cast.widen_bf16(words, out)
    np.testing.assert_array_equal(out, torch_bits(words, torch.bfloat16, torch.float32))
    finite = words[(words & 0x7F80) != 0x7F80]
    assert cast.widen_bf16(finite, np.empty(len(finite), np.uint32))


@pytest.mark.parametrize("pair", [("F32", "BF16"), ("BF16", "F32")])
def test_cast_into_reads_and_writes_at_offsets_in_threaded_pieces(tmp_path, monkeypatch, pair):
    monkeypatch.setattr(cast, "PIECE", 1000)  # many pieces, the last one short
    words = f32_specials()
    src = words if pair[0] == "F32" else (words >> 16).astype(np.uint16)
    path, out = tmp_path / "data", tmp_path / "out"
    path.write_bytes(b"x" * 24 + src.tobytes() + b"tail")
    count = len(src) - 7
    torch_types = {"F32": torch.float32, "BF16": torch.bfloat16}
    want = torch_bits(src[2 : 2 + count], *(torch_types[p] for p in pair))
    fd = os.open(out, os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, b"head", 0)
        assert not cast.cast_into(path, 24 + 2 * src.itemsize, count, *pair, fd, 4)
        assert out.read_bytes() == b"head" + want.tobytes()
        finite = src[np.isfinite(src.view(np.float32))] if pair[0] == "F32" else src[(src & 0x7F80) != 0x7F80]
        path.write_bytes(finite.tobytes())
        # float32 near its maximum rounds up to bfloat16 inf: not finite after the cast
        assert cast.cast_into(path, 0, len(finite), *pair, fd, 4) == (pair[0] == "BF16")
    finally:
        os.close(fd)


def test_convert_uses_the_kernels_and_round_trips(tiny, tmp_path, monkeypatch):
    calls = []
    real = cast.cast_into
    monkeypatch.setattr("modelsurgeon.convert.safetensors_out.cast_into", lambda *a: calls.append(a) or real(*a))
    src = tiny("llama", n_layers=2, dtype=torch.bfloat16)
    convert(src, tmp_path / "f32", dtype="float32")
    convert(tmp_path / "f32", tmp_path / "bf16", dtype="bfloat16")
    assert {c[3:5] for c in calls} == {("BF16", "F32"), ("F32", "BF16")}
    before, f32, back = (load_file(p / "model.safetensors") for p in (src, tmp_path / "f32", tmp_path / "bf16"))
    for name, t in before.items():
        assert torch.equal(f32[name].view(torch.int32), t.to(torch.float32).view(torch.int32)), name
        assert torch.equal(back[name].view(torch.int16), t.view(torch.int16)), name


def test_bfloat16_overflow_is_named(tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny("llama", n_layers=2), model)
    state = load_file(model / "model.safetensors")
    state["model.norm.weight"][3] = 3.4e38  # float32, beyond bfloat16's largest finite value
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConvertError, match="'model.norm.weight' overflows bfloat16"):
        convert(model, tmp_path / "out", dtype="bfloat16")
    assert not (tmp_path / "out").exists()
