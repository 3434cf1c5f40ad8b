"""Shared duplicates by behaviour: a grown model loaded with copies sharing one base tensor
computes what from_pretrained computes, holds about the source's bytes, and LoRA training on it
gives the same merged weights as training the unshared model with the same seed."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from modelsurgeon.errors import CheckpointError
from modelsurgeon.grow.engine import grow
from modelsurgeon.io.reader import open_checkpoint
from modelsurgeon.plan import parse_plan
from modelsurgeon.train.shared import distinct_storage_bytes, load_shared

DOUBLE = "name: double\nsteps:\n  - op: interpolate\n    factor: 2\n"
PRO = "name: pro\nsteps:\n  - op: interpolate\n    factor: 2\n    layers: {every: 2}\n    new: zero\n"


@pytest.fixture(scope="module")
def grown(tiny, tmp_path_factory):
    """grown(family, plan) -> (source dir, grown dir), cached."""
    cache = {}

    def make(family: str, plan: str):
        if (family, plan) not in cache:
            src = tiny(family, n_layers=4)
            out = tmp_path_factory.mktemp(f"shared-{family}") / plan
            grow(src, parse_plan({"double": DOUBLE, "pro": PRO}[plan]), out)
            cache[family, plan] = (src, out)
        return cache[family, plan]

    return make


def ids(model) -> torch.Tensor:
    return torch.randint(4, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family,plan", [("llama", "double"), ("llama", "pro"), ("gpt2", "double"), ("qwen3", "pro")])
def test_same_logits_as_from_pretrained(grown, family, plan):
    _, path = grown(family, plan)
    shared, info = load_shared(path)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    x = ids(ref)
    with torch.no_grad():
        torch.testing.assert_close(shared(x).logits, ref(x).logits, atol=0, rtol=0)
    assert info.groups and not shared.training


def test_copies_share_storage_except_where_bytes_differ(grown):
    _, path = grown("llama", "pro")  # layers 0, 1, 1z, 2, 3, 3z: the z copies have zero o/down
    shared, info = load_shared(path)
    layers = shared.model.layers
    assert layers[1].self_attn.q_proj.weight.data_ptr() == layers[2].self_attn.q_proj.weight.data_ptr()
    assert layers[1].mlp.up_proj.weight is layers[2].mlp.up_proj.weight
    assert layers[1].self_attn.q_proj is not layers[2].self_attn.q_proj  # own module: own adapter
    assert not layers[1].self_attn.q_proj.weight.requires_grad
    assert layers[1].self_attn.o_proj.weight.data_ptr() != layers[2].self_attn.o_proj.weight.data_ptr()
    assert layers[2].self_attn.o_proj.weight.abs().max() == 0
    assert layers[0].self_attn.q_proj.weight.data_ptr() != layers[1].self_attn.q_proj.weight.data_ptr()
    assert ("model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight") not in info.groups
    assert ("model.layers.1.input_layernorm.weight", "model.layers.2.input_layernorm.weight") in info.groups
    before = distinct_storage_bytes(shared)
    shared.to(torch.bfloat16)  # a dtype or device move keeps one tensor per group
    assert layers[1].mlp.up_proj.weight is layers[2].mlp.up_proj.weight
    assert distinct_storage_bytes(shared) < 0.51 * before


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_memory_is_the_sources_not_the_grown(grown, family):
    src, path = grown(family, "double")
    shared, info = load_shared(path)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    source_bytes, grown_bytes = open_checkpoint(src).total_bytes, open_checkpoint(path).total_bytes
    assert grown_bytes > 1.5 * source_bytes
    assert info.bytes_loaded == source_bytes and info.bytes_grown == grown_bytes
    assert (
        distinct_storage_bytes(ref) - distinct_storage_bytes(shared) == info.bytes_shared == grown_bytes - source_bytes
    )


def test_pro_copies_cost_only_their_zeroed_outputs(grown):
    src, path = grown("llama", "pro")
    _, info = load_shared(path)
    ckpt = open_checkpoint(path)
    zeroed = [
        n
        for n in ckpt.names
        if n.startswith(("model.layers.2.", "model.layers.5.")) and ("o_proj" in n or "down_proj" in n)
    ]
    assert info.bytes_loaded == open_checkpoint(src).total_bytes + sum(ckpt.tensors[n].nbytes for n in zeroed)


def lora_train(model, steps: int = 3):
    """Same seed -> same adapters and data; plain AdamW over the LoRA parameters."""
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    x = ids(model)
    peft_model.train()
    for _ in range(steps):
        peft_model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return peft_model


def merged_weights(peft_model) -> dict[str, torch.Tensor]:
    """base + own delta per adapted module, computed without touching the (shared) base."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            out[name] = module.get_base_layer().weight.detach() + module.get_delta_weight("default")
    return out


def test_lora_on_shared_equals_unshared_run(grown):
    _, path = grown("llama", "double")
    shared = merged_weights(lora_train(load_shared(path)[0]))
    plain = merged_weights(lora_train(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)))
    assert shared.keys() == plain.keys() and len(shared) == 3 * 8
    for name in shared:
        torch.testing.assert_close(shared[name], plain[name], atol=1e-6, rtol=0)
    # each copy got its own weights: copies 2 and 3 of source layer 1 started identical
    a, b = shared["model.layers.2.self_attn.q_proj"], shared["model.layers.3.self_attn.q_proj"]
    assert (a - b).abs().max() > 1e-4


def test_gradient_checkpointing_gives_the_same_gradients(grown):
    _, path = grown("llama", "double")
    model = load_shared(path)[0]
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    )
    peft_model.train()
    x = ids(model)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model(x, labels=x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad})
        peft_model.zero_grad()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=0)


def test_refuses_models_without_a_layer_map(tiny, grown, tmp_path):
    with pytest.raises(CheckpointError, match="no surgeon.json layer map"):
        load_shared(tiny("llama", n_layers=4))
    _, path = grown("llama", "double")
    stale = tmp_path / "stale"
    stale.mkdir()
    for f in path.iterdir():
        (stale / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((stale / "surgeon.json").read_text())
    (stale / "surgeon.json").write_text(json.dumps({**manifest, "layer_map": manifest["layer_map"][:-1]}))
    with pytest.raises(CheckpointError, match="maps 7 layers but the checkpoint has 8"):
        load_shared(stale)
