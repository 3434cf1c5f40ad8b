"""GGUF export, read back with gguf's own GGUFReader: names, shapes, types, metadata and
vocabulary, and every tensor's values mapped back to the Hugging Face tensor it came from."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.convert import convert
from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan
from modelsurgeon.tiny import tiny_config

gguf = pytest.importorskip("gguf")

DOUBLE = "name: d\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n"
ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 400,
}  # one frequency in each regime


def read(path):
    reader = gguf.GGUFReader(path / "model.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


def values(t) -> torch.Tensor:
    """A GGUF tensor as torch, rows first (numpy's order; GGUF's shape field is reversed)."""
    data = np.array(t.data)
    if t.tensor_type == gguf.GGMLQuantizationType.BF16:
        return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(data)


def unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's q/k row permutation (written independently of the exporter)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> str:
    table = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "output": "lm_head",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{table[parts[2]]}.{parts[3]}"
    return f"{table[parts[0]]}.{parts[1]}"


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gguf_metadata_tensors_and_values(tiny, tmp_path, family, dtype):
    src = tiny(family, n_layers=2, dtype=torch.bfloat16) if dtype == "bfloat16" else tiny(family, n_layers=2)
    convert(src, tmp_path / "out", to="gguf", dtype=dtype)
    fields, tensors = read(tmp_path / "out")
    config = json.loads((src / "config.json").read_text())
    arch = ARCH[family]
    assert fields["general.architecture"] == arch
    expected = {
        "block_count": 2,
        "context_length": 128,
        "embedding_length": 32,
        "feed_forward_length": 96,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "rope.dimension_count": 8,
        "vocab_size": 256,
    }
    assert {k: fields[f"{arch}.{k}"] for k in expected} == expected
    assert fields[f"{arch}.rope.freq_base"] == config["rope_parameters"]["rope_theta"]
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert fields["general.file_type"] == {"bfloat16": 32, "float16": 1}[dtype]
    hf = load_file(src / "model.safetensors")
    assert {hf_name(n) for n in tensors} == set(hf)  # every tensor, nothing else
    want_type = {"bfloat16": "BF16", "float16": "F16"}[dtype]
    for name, t in tensors.items():
        source = hf[hf_name(name)]
        assert tuple(int(d) for d in t.shape) == tuple(reversed(source.shape)), name  # GGUF: ne0 first
        assert t.tensor_type.name == (want_type if source.ndim == 2 else "F32"), name
        got = values(t).reshape(source.shape)
        heads = {"attn_q": 4, "attn_k": 2}.get(name.split(".")[2] if name.startswith("blk") else "", 0)
        if heads and family != "qwen2":  # llama.cpp's llama graph wants rope pairs interleaved
            got = unpermute(got, heads)
        assert torch.equal(got, source.to(got.dtype)), name


def test_gguf_vocabulary_and_special_tokens(tiny, tmp_path):
    src = tiny("qwen2", n_layers=2)
    convert(src, tmp_path / "out", to="gguf")
    fields, _ = read(tmp_path / "out")
    vocab = json.loads((src / "tokenizer.json").read_text())
    by_id = {i: t for t, i in vocab["model"]["vocab"].items()} | {a["id"]: a["content"] for a in vocab["added_tokens"]}
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"  # tiny tokenizers use ByteLevel's own regex
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == 256
    assert all(tokens[i] == t for i, t in by_id.items())
    assert all(tokens[i] == f"[PAD{i}]" and types[i] == gguf.TokenType.UNUSED for i in set(range(256)) - set(by_id))
    assert [types[i] for i in range(4)] == [gguf.TokenType.CONTROL] * 4  # <pad> <s> </s> <unk>
    assert types[10] == gguf.TokenType.NORMAL
    merges = vocab["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
    ids = {k: fields[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "padding", "unknown")}
    assert ids == {"bos": 1, "eos": 2, "padding": 0, "unknown": 3}


def test_gguf_grown_model_has_the_new_block_count(tiny, tmp_path):
    grow(tiny("llama"), parse_plan(DOUBLE), tmp_path / "grown")
    convert(tmp_path / "grown", tmp_path / "out", to="gguf")
    fields, tensors = read(tmp_path / "out")
    assert fields["llama.block_count"] == 8
    assert {n.split(".")[1] for n in tensors if n.startswith("blk.")} == {str(i) for i in range(8)}
    lineage = json.loads((tmp_path / "out" / "surgeon.json").read_text())["lineage"]
    assert [(s["kind"], s.get("to")) for s in lineage] == [("grow", None), ("convert", "gguf")]
    assert lineage[-1]["dtype"] == "float32"  # the source's dtype when none is asked for


def test_gguf_tied_model_has_no_output_tensor(tiny, tmp_path):
    convert(tiny("qwen2", n_layers=2, tie_word_embeddings=True), tmp_path / "out", to="gguf")
    _, tensors = read(tmp_path / "out")
    assert "token_embd.weight" in tensors and "output.weight" not in tensors  # llama.cpp ties it


@pytest.mark.parametrize("family", ["gemma2", "gpt2", "gpt_neox"])
def test_gguf_family_transforms(tiny, tmp_path, family):
    """The per-family changes llama.cpp's converter makes, each undone independently here:
    Gemma's norm offsets become gains, GPT-2's Conv1D weights are transposed, GPT-NeoX's fused
    qkv rows go from [head][q k v] to [q; k; v]; everything else is copied unchanged."""
    src = tiny(family, n_layers=2)
    convert(src, tmp_path / "out", to="gguf", dtype="float32")
    _, tensors = read(tmp_path / "out")
    got = {n: values(t) for n, t in tensors.items()}
    hf = load_file(src / "model.safetensors")
    if family == "gemma2":
        assert torch.equal(got["blk.0.attn_norm.weight"], hf["model.layers.0.input_layernorm.weight"] + 1)
        assert torch.equal(got["output_norm.weight"], hf["model.norm.weight"] + 1)
        assert torch.equal(got["blk.1.attn_q.weight"].reshape(32, 32), hf["model.layers.1.self_attn.q_proj.weight"])
        assert "output.weight" not in got  # tied: llama.cpp reuses token_embd
    elif family == "gpt2":
        w = hf["transformer.h.1.mlp.c_fc.weight"]  # (in=32, out=128)
        assert tuple(int(d) for d in tensors["blk.1.ffn_up.weight"].shape) == (32, 128)  # GGUF: ne0 (in) first
        assert torch.equal(got["blk.1.ffn_up.weight"].reshape(128, 32), w.T)
        assert torch.equal(got["position_embd.weight"].reshape(128, 32), hf["transformer.wpe.weight"])
        assert not any(n.endswith((".attn.bias", ".attn.masked_bias")) for n in got)
    else:
        w, b = (hf[f"gpt_neox.layers.0.attention.query_key_value.{k}"] for k in ("weight", "bias"))
        q_of_head_1 = w[3 * 8 : 4 * 8]  # 4 heads of 8: rows [q0 k0 v0 q1 k1 v1 ...]
        v_of_head_3 = b[11 * 8 : 12 * 8]
        qkv, qkv_b = got["blk.0.attn_qkv.weight"].reshape(96, 32), got["blk.0.attn_qkv.bias"]
        assert torch.equal(qkv[8:16], q_of_head_1) and torch.equal(qkv_b[2 * 32 + 3 * 8 :], v_of_head_3)
        assert torch.equal(qkv.sort(0).values, w.sort(0).values)  # a reordering of the same rows


def test_gguf_single_file_output(tiny, tmp_path):
    """`-o NAME.gguf` writes that one file (lineage inside it), atomically; --force replaces it;
    a .gguf name with another --to is refused; an existing directory of that name stays a directory."""
    src = tiny("qwen2", n_layers=2)
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "tiny.gguf")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]
    reader = gguf.GGUFReader(tmp_path / "tiny.gguf")
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert len(reader.tensors) == 2 * 12 + 3  # 12 per layer: q/k/v carry biases
    manifest = json.loads(reader.fields["modelsurgeon.manifest"].contents())
    assert manifest["lineage"][-1]["to"] == "gguf" and manifest["lineage"][-1]["files"] == ["tiny.gguf"]
    again = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "tiny.gguf")])
    assert again.exit_code != 0 and "already exists" in again.output
    forced = runner.invoke(
        app, ["convert", str(src), "-o", str(tmp_path / "tiny.gguf"), "--force", "--dtype", "bfloat16"]
    )
    assert forced.exit_code == 0, forced.output
    assert gguf.GGUFReader(tmp_path / "tiny.gguf").fields["general.file_type"].contents() == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]  # no temporary left behind
    wrong = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "x.gguf"), "--to", "safetensors"])
    assert wrong.exit_code != 0 and "named .gguf but --to is safetensors" in " ".join(wrong.output.split())
    (tmp_path / "dir.gguf").mkdir()
    as_dir = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "dir.gguf"), "--to", "gguf", "--force"])
    assert as_dir.exit_code == 0, as_dir.output
    assert {"model.gguf", "config.json", "surgeon.json"} <= {p.name for p in (tmp_path / "dir.gguf").iterdir()}


def test_gguf_phi3_name_llama_cpp_can_load(tiny, tmp_path):
    """llama.cpp looks up Phi-3's special tokens when general.name contains 'phi3'; a vocabulary
    without them gets another name (and a warning) rather than a file llama.cpp cannot load."""
    src = tmp_path / "Phi3-grown"
    shutil.copytree(tiny("phi3", n_layers=2), src)
    conv = convert(src, tmp_path / "out", to="gguf")
    fields, _ = read(tmp_path / "out")
    assert fields["general.name"] == "phi_3-grown"
    assert any("'<|endoftext|>'" in w for w in conv.warnings)
    ok = tmp_path / "tiny-model"
    shutil.copytree(tiny("phi3", n_layers=2), ok)
    convert(ok, tmp_path / "out2", to="gguf")
    assert read(tmp_path / "out2")[0]["general.name"] == "tiny-model"


def test_gguf_llama3_rope_factors_match_transformers(tiny, tmp_path):
    rope = LLAMA3_ROPE
    convert(tiny("llama", n_layers=2, rope_parameters=rope), tmp_path / "out", to="gguf")
    fields, tensors = read(tmp_path / "out")
    config = tiny_config("llama", n_layers=2, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    default = 1.0 / (rope["rope_theta"] ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
    factors = values(tensors["rope_freqs.weight"])
    assert len({round(float(f), 3) for f in factors}) == 3  # 1, factor, and one smoothed value
    torch.testing.assert_close(factors, default / scaled, rtol=1e-5, atol=0)
    assert fields["llama.rope.freq_base"] == 500000.0


# llama.cpp's qwen2/3 graphs have no sliding window
FULL_ATTENTION = {"use_sliding_window": False, "layer_types": ["full_attention"] * 2}
# hand-laid table: variants of a family share a row (fmt: skip below)
LLAMA_CPP_CASES = {
    "llama": ("llama", {}), "mistral": ("mistral", {}), "qwen2": ("qwen2", FULL_ATTENTION),
    "llama-tied": ("llama", {"tie_word_embeddings": True}), "llama3-rope": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "qwen2-tied": ("qwen2", {**FULL_ATTENTION, "tie_word_embeddings": True}), "qwen3": ("qwen3", FULL_ATTENTION),
    # Gemma's layers alternate sliding (window 16) and full attention; the prompt is longer than the window.
    "gemma2": ("gemma2", {}), "gemma3_text": ("gemma3_text", {}), "gemma2-no-window": ("gemma2", FULL_ATTENTION),
    "phi3": ("phi3", {}), "olmo2": ("olmo2", {}),
    "gpt2": ("gpt2", {}), "gpt_neox": ("gpt_neox", {}),
}  # fmt: skip
PROMPT = [5, 17, 42, 99, 7, 200, 33, 64, 1, 250, 128, 3] * 3  # 36 tokens


class GgmlGelu(torch.nn.Module):
    """GELU as ggml computes it on CPU: the tanh form, looked up in a table indexed by the input
    rounded to float16, so output and input are float16-rounded (outside +-10: 0 and x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.half().float()
        y = (0.5 * h * (1 + torch.tanh(0.7978845608028654 * h * (1 + 0.044715 * h * h)))).half().float()
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))


def with_ggml_gelu(model) -> int:
    """Swap every GELU of a transformers model for GgmlGelu; return how many were swapped."""
    swapped = 0
    for module in model.modules():
        for attr in ("act", "act_fn"):
            if "gelu" in type(getattr(module, attr, None)).__name__.lower():
                setattr(module, attr, GgmlGelu())
                swapped += 1
    return swapped


@pytest.mark.parametrize("case", list(LLAMA_CPP_CASES))
def test_gguf_logits_match_llama_cpp(tiny, tmp_path, case):
    """End to end, where llama-cpp-python is installed: llama.cpp's logits on the exported file
    equal transformers' on the source. A missing or wrong q/k permutation, head count, norm
    offset, transpose, qkv order, sliding-window layer or rope setting moves the logits by
    O(1); float32 rounding by ~1e-5. ggml's table GELU is mirrored in the reference; what is
    left of it (an input landing on the other side of a float16 rounding step) stays < 1e-3."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM

    family, overrides = LLAMA_CPP_CASES[case]
    src = tmp_path / f"{case}-model"  # llama.cpp reads general.name (the directory's name) for Phi-3
    shutil.copytree(tiny(family, n_layers=2, hidden=64, **overrides), src)
    convert(src, tmp_path / "out", to="gguf", dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gelu = with_ggml_gelu(model)
    assert gelu == (2 if family in ("gemma2", "gemma3_text", "gpt2", "gpt_neox") else 0)
    with torch.no_grad():
        want = model(torch.tensor([PROMPT])).logits[0]
    # An F32 KV cache: llama.cpp's default F16 cache rounds keys and values.
    llm = llama_cpp.Llama(
        str(tmp_path / "out" / "model.gguf"), logits_all=True, verbose=False, n_ctx=64, type_k=0, type_v=0
    )
    llm.eval(PROMPT)
    got = torch.tensor(np.array(llm.scores[: len(PROMPT)]))
    llm.close()
    tol = 1e-3 if gelu else 1e-4
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
