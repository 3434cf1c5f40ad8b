"""Width growth inside a `surgeon progressive` recipe: the planner counts the widened model from
its rewritten config, so the FLOPs of every later stage (and the FLOP-matched baseline) are those
of the model that actually trains; counted against the grown checkpoint itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from modelsurgeon.errors import RecipeError
from modelsurgeon.progressive import run_recipe
from modelsurgeon.progressive.flops import stage_flops
from modelsurgeon.progressive.init import counts_of_checkpoint
from modelsurgeon.progressive.planning import plan_recipe
from modelsurgeon.progressive.recipe import load_recipe

RECIPE = """name: wide
init: {{family: llama, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
       num_key_value_heads: 2, head_dim: 8, max_position_embeddings: 64, tie_word_embeddings: true}}
data: ["synthetic:arith:n=200,max_k=2"]
eval: {{arith: null}}
defaults: {{seq_len: 32, batch_size: 2, log_every: 1, save_every: 0, lr: 0.003}}
stages:
  - train: {{method: full, steps: 2}}
  - grow: {{steps: [{{op: interpolate, factor: 2, branch_scale: split}},
                   {{op: widen, hidden: 2x, ffn: 2x, heads: 2x}}]}}
  - train: {{method: full, steps: 2{extra}}}
baselines:
  - {{name: scratch, init: {{num_hidden_layers: 4, hidden_size: 32, intermediate_size: 64, num_attention_heads: 4,
                           num_key_value_heads: 4}}, match: flops}}
"""


def _recipe(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "wide.yaml"
    path.write_text(RECIPE.format(extra=extra))
    return path


def test_planned_counts_are_the_widened_model(tmp_path):
    plan = plan_recipe(load_recipe(_recipe(tmp_path)))
    grow, train = plan.stages[1], plan.stages[2]
    assert grow.widened and grow.n_layers == 4 and grow.config["hidden_size"] == 32
    base = plan.baselines[0]
    # the baseline is the grown architecture from scratch: same shapes, so the same counts
    assert (train.counts.layer_matmul, train.counts.total) == (base.counts.layer_matmul, base.counts.total)
    assert train.counts.layer_matmul == 4 * plan.stages[0].counts.layer_matmul  # 2x wider: 4x each matmul


def test_run_trains_the_model_the_planner_counted(tmp_path):
    out = tmp_path / "run"
    run_recipe(_recipe(tmp_path), out)
    summary = json.loads((out / "summary.json").read_text())
    grow, train = summary["stages"][1], summary["stages"][2]
    grown = out / grow["model"]
    real = counts_of_checkpoint(grown)
    with safe_open(grown / "model.safetensors", "pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    assert grow["params"] == train["params"] == real.total == params
    assert train["flops_per_token"] == stage_flops(real, 1, 32, "full").per_token
    assert grow["equivalence"] == "approx"  # split copies are first-order; the 2x widen itself is exact
    config = json.loads((grown / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (32, 4, 4)


def test_carrying_adamw_state_across_a_widen_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="carry_optimizer maps AdamW state through a layer map, not a widen"):
        plan_recipe(load_recipe(_recipe(tmp_path, ", carry_optimizer: copy")))


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
