"""mergekit passthrough configs translate to layer maps identical to the native plans."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from modelsurgeon.errors import PlanError
from modelsurgeon.grow.engine import grow
from modelsurgeon.ops.compile import compile_plan
from modelsurgeon.plan import parse_plan

SOLAR = """
slices:
  - sources:
      - model: upstage/base
        layer_range: [0, 24]
  - sources:
      - model: upstage/base
        layer_range: [8, 32]
merge_method: passthrough
dtype: bfloat16
"""


def test_solar_config_equals_native_splice():
    loaded = parse_plan(SOLAR, "solar-mk.yml")
    assert "translated mergekit passthrough" in loaded.translation and "dtype" in loaded.translation
    mk = compile_plan(loaded.plan, 32).layer_map
    native = compile_plan(parse_plan("name: s\nsteps:\n  - op: splice\n    trim: 8\n").plan, 32).layer_map
    assert [(e.source, e.scale) for e in mk] == [(e.source, e.scale) for e in native]


def test_scale_filters_become_branch_scales_with_gradients():
    text = """
merge_method: passthrough
slices:
  - sources: [{model: m, layer_range: [0, 2]}]
  - sources:
      - model: m
        layer_range: [0, 3]
        parameters:
          scale:
            - filter: o_proj
              value: [0.0, 1.0]
            - filter: down_proj
              value: [0.0, 1.0]
            - value: 1.0
"""
    m = compile_plan(parse_plan(text).plan, 3).layer_map
    assert [(e.source, e.scale) for e in m] == [(0, 1.0), (1, 1.0), (0, 0.0), (1, 0.5), (2, 1.0)]


def test_two_model_config_names_the_other_model_and_takes_its_head():
    """mergekit takes embeddings from the first slice's model, final norm and head from the last's."""
    text = """
merge_method: passthrough
slices:
  - sources: [{model: a, layer_range: [0, 3]}]
  - sources: [{model: b, layer_range: [2, 5]}]
  - sources:
      - model: b
        layer_range: [5, 7]
        parameters: {scale: [{filter: o_proj, value: 0.5}, {filter: down_proj, value: 0.5}]}
"""
    loaded = parse_plan(text, "frank.yml")
    step = loaded.plan.steps[0]
    assert loaded.plan.head_from == "b" and loaded.plan.embeddings_from is None
    assert step.models == ["b"] and "'b'" in loaded.translation
    m = compile_plan(loaded.plan, 4, models={"b": (1, 8)}).layer_map
    assert [(e.model, e.source, e.scale) for e in m] == [
        (0, 0, 1.0),
        (0, 1, 1.0),
        (0, 2, 1.0),
        (1, 2, 1.0),
        (1, 3, 1.0),
        (1, 4, 1.0),
        (1, 5, 0.5),
        (1, 6, 0.5),
    ]


@pytest.mark.parametrize(
    "text, msg",
    [
        ("merge_method: linear\nslices: [{sources: [{model: m, layer_range: [0, 2]}]}]\n", "only 'passthrough'"),
        (
            "merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [0, 2]}, {model: a, "
            "layer_range: [0, 2]}]}]\n",
            "exactly one source",
        ),
        ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [2, 2]}]}]\n", "start < end"),
        (
            "merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [0, 2], parameters: {scale: "
            "[{filter: o_proj, value: 0}]}}]}]\n",
            "both o_proj and down_proj",
        ),
        (
            "merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [0, 2], parameters: {scale: "
            "0.5}}]}]\n",
            "without a filter",
        ),
    ],
)
def test_untranslatable_configs(text, msg):
    with pytest.raises(PlanError, match=msg):
        parse_plan(text)


SPLICE = (
    "merge_method: passthrough\nslices:\n  - sources: [{model: m, layer_range: [0, 2]}]\n"
    "  - sources: [{model: m, layer_range: [1, 4]}]\n"
)


@pytest.mark.parametrize(
    "key, dtype, to", [("dtype", "bfloat16", torch.bfloat16), ("out_dtype", "float16", torch.float16)]
)
def test_mergekit_dtype_casts_the_output(tiny, tmp_path, key, dtype, to):
    """mergekit writes its merge in out_dtype (else dtype); so does grow: every output tensor
    is bit-identical to `source.to(dtype)`, the files shrink to that dtype's size, and
    config.json names it, as `surgeon convert --dtype` does."""
    src = tiny("llama")  # float32
    prep = grow(src, parse_plan(SPLICE + f"{key}: {dtype}\n", "mk.yml"), tmp_path / "out")
    assert f"written as {dtype} (the config's {key})" in prep.loaded.translation
    hf, out = load_file(src / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    layer = {0: 0, 1: 1, 2: 1, 3: 2, 4: 3}  # output layer -> source layer
    assert len(out) == len(hf) + 9  # one more layer of 9 tensors (2 + 3 layers from 4)
    for name, value in out.items():
        parts = name.split(".")
        source = ".".join([*parts[:2], str(layer[int(parts[2])]), *parts[3:]]) if parts[1] == "layers" else name
        assert value.dtype == to and torch.equal(value, hf[source].to(to)), name
    data = sum(v.numel() for v in out.values()) * 2  # 2 bytes a value, not the source's 4
    assert 0 < (tmp_path / "out" / "model.safetensors").stat().st_size - data < 10_000  # the rest is the header
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == dtype


def test_mergekit_without_dtype_keeps_the_source_dtype(tiny, tmp_path):
    src = tiny("llama", dtype=torch.bfloat16)
    grow(src, parse_plan(SPLICE, "mk.yml"), tmp_path / "out")
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert {v.dtype for v in out.values()} == {torch.bfloat16}


def test_mergekit_unknown_dtype_is_a_plan_error():
    with pytest.raises(PlanError, match=r"dtype: expected one of float32, bfloat16, float16, got 'int8'"):
        parse_plan(SPLICE + "dtype: int8\n")
