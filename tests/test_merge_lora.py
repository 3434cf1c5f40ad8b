"""merge-lora by behaviour: the merged checkpoint computes what the (unmerged) peft model
computes, for Linear and GPT-2 Conv1D layers and peft's per-module options; it is streamed in
row blocks, bit-identical across runs, refuses what it cannot merge, and leaves nothing behind."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import CheckpointError, OutputError
from modelsurgeon.io import writer
from modelsurgeon.train.merge import merge_lora

CONFIGS = {
    "llama": dict(
        target_modules=["q_proj", "v_proj", "down_proj", "lm_head"],
        r=4,
        lora_alpha=8,
        rank_pattern={"layers.1.self_attn.q_proj": 2},
        alpha_pattern={"down_proj": 5},
    ),
    "llama-rslora": dict(
        target_modules=["k_proj", "o_proj", "gate_proj", "up_proj"], r=8, lora_alpha=4, use_rslora=True
    ),
    "gpt2": dict(
        target_modules=["c_attn", "c_proj", "c_fc"],
        r=4,
        lora_alpha=8,
        fan_in_fan_out=True,
        lora_bias=True,
        modules_to_save=["wpe"],
    ),
}


def make_adapter(base, out, **config):
    """A saved adapter with every LoRA tensor non-zero (peft's default B = 0 would merge to a no-op)."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name and name.endswith("bias") or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(out)
    return out


def logits(model, vocab: int) -> torch.Tensor:
    x = torch.randint(4, vocab, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("case", list(CONFIGS))
def test_merged_logits_equal_peft_logits(tiny, tmp_path, case, monkeypatch):
    base = tiny("gpt2" if case == "gpt2" else "llama", n_layers=2)
    adapter = make_adapter(base, tmp_path / "adapter", **CONFIGS[case])
    monkeypatch.setattr(writer, "CHUNK_ELEMENTS", 100)  # many row blocks per tensor: the streamed path
    summary = merge_lora(base, adapter, tmp_path / "out", max_shard_size=60_000)
    assert summary["merged"] > 0 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter
    ).eval()
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    want, vocab = logits(peft_model, merged.config.vocab_size), merged.config.vocab_size
    torch.testing.assert_close(logits(merged, vocab), want, atol=2e-5, rtol=1e-5)
    assert (logits(plain, vocab) - want).abs().max() > 0.1  # the adapter does change the model


def test_lineage_and_files(tiny, tmp_path):
    base = tiny("llama", n_layers=2)
    adapter = make_adapter(base, tmp_path / "adapter", **CONFIGS["llama"])
    merge_lora(base, adapter, tmp_path / "out")
    out = tmp_path / "out"
    stage = json.loads((out / "surgeon.json").read_text())["lineage"][-1]
    assert stage["kind"] == "merge-lora" and "model.layers.1.self_attn.q_proj.weight" in stage["merged"]
    assert stage["replaced"] == ["lm_head.weight"]  # peft saved the targeted lm_head whole
    assert json.loads((out / "config.json").read_text()) == json.loads((base / "config.json").read_text())
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    untouched = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(
        load_file(out / "model.safetensors")[untouched], load_file(base / "model.safetensors")[untouched]
    )


def test_idempotent_and_refuses_existing_output(tiny, tmp_path):
    base = tiny("gpt2", n_layers=2)
    adapter = make_adapter(base, tmp_path / "adapter", **CONFIGS["gpt2"])
    merge_lora(base, adapter, tmp_path / "a")
    merge_lora(base, adapter, tmp_path / "b")
    files = sorted(f.name for f in (tmp_path / "a").iterdir())
    assert files == sorted(f.name for f in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with pytest.raises(OutputError, match="already exists"):
        merge_lora(base, adapter, tmp_path / "a")
    merge_lora(base, adapter, tmp_path / "a", force=True)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already has this adapter merged"):
        merge_lora(tmp_path / "a", adapter, tmp_path / "twice")
    assert not (tmp_path / "twice").exists()


def test_bfloat16_base_is_merged_in_float32(tiny, tmp_path):
    base = tiny("llama", n_layers=2, dtype=torch.bfloat16)
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"], r=4, lora_alpha=8)
    merge_lora(base, adapter, tmp_path / "out")
    name = "model.layers.0.self_attn.q_proj.weight"
    got = load_file(tmp_path / "out" / "model.safetensors")[name]
    lora = load_file(adapter / "adapter_model.safetensors")
    a, b = (lora[f"base_model.model.model.layers.0.self_attn.q_proj.lora_{x}.weight"].float() for x in "AB")
    want = (load_file(base / "model.safetensors")[name].float() + 2.0 * (b @ a)).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def edit_config(adapter, **changes):
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"use_dora": True}, "use_dora: DoRA"),
        ({"peft_type": "IA3"}, "only LORA adapters"),
        ({"init_lora_weights": "pissa"}, "rewrote the base weights"),
        ({"r": 3}, "rank 4 in the weights, but adapter_config.json gives r=3"),
    ],
)
def test_refuses_unmergeable_adapters(tiny, tmp_path, change, message):
    base = tiny("llama", n_layers=2)
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"], r=4, lora_alpha=8)
    edit_config(adapter, **change)
    with pytest.raises(CheckpointError, match=message):
        merge_lora(base, adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_refuses_an_adapter_of_another_model(tiny, tmp_path):
    adapter = make_adapter(
        tiny("llama", n_layers=2), tmp_path / "adapter", target_modules=["q_proj", "lm_head"], r=4, lora_alpha=8
    )
    wider = tiny("llama", n_layers=2, hidden=64)
    with pytest.raises(CheckpointError) as exc:
        merge_lora(wider, adapter, tmp_path / "out")
    assert "model.layers.0.self_attn.q_proj" in exc.value.message and "lm_head.base_layer.weight" in exc.value.message
    gpt2 = tiny("gpt2", n_layers=2)
    with pytest.raises(
        CheckpointError, match="targets 'model.layers.0.self_attn.q_proj.weight', which BASE does not have"
    ):
        merge_lora(gpt2, adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_missing_adapter_files(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        merge_lora(tiny("llama", n_layers=2), tmp_path / "empty", tmp_path / "out")


def test_cli(tiny, tmp_path):
    base = tiny("llama", n_layers=2)
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"], r=4, lora_alpha=8)
    ok = CliRunner().invoke(app, ["merge-lora", str(base), str(adapter), "-o", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert "merged 2 LoRA module(s)" in ok.output and (tmp_path / "out" / "model.safetensors").is_file()
    again = CliRunner().invoke(app, ["merge-lora", str(base), str(adapter), "-o", str(tmp_path / "out")])
    assert again.exit_code == OutputError.exit_code and "--force" in again.output
    missing = CliRunner().invoke(app, ["merge-lora", str(base), str(tmp_path / "nowhere"), "-o", str(tmp_path / "o2")])
    assert missing.exit_code == CheckpointError.exit_code and "not a directory" in missing.output
