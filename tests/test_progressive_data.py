"""A progressive run with a fixed eval set (`eval_tokens`): every train stage and the baseline
score the same held-out documents, and each stage after a growth trains on documents after the
ones its parent trained on, not on the same ones again."""

from __future__ import annotations

import json
from pathlib import Path

from modelsurgeon.progressive import run_recipe

RECIPE = """name: fixed-eval
init: {family: llama, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
       num_key_value_heads: 2, max_position_embeddings: 64}
data: ["synthetic:arith:n=3000,max_k=2"]
eval: {arith: null}
defaults: {seq_len: 32, batch_size: 2, log_every: 1, save_every: 0, lr: 0.003, eval_tokens: 800}
stages:
  - train: {method: full, steps: 6}
  - grow: {steps: [{op: interpolate, factor: 2, new: zero}]}
  - train: {method: full, steps: 6}
baselines:
  - {name: scratch-4, init: {num_hidden_layers: 4}, match: flops}
"""


def _settings(run: Path, record: dict) -> dict:
    lineage = json.loads((run / record["model"] / "surgeon.json").read_text())["lineage"]
    return lineage[-1]["data_stats"]["settings"] | {"eval": lineage[-1]["data_stats"]["total"]["eval_tokens"]}


def test_stages_continue_the_stream_and_share_one_eval_set(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    run_recipe(recipe, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    first, second = (_settings(tmp_path / "run", s) for s in summary["stages"] if s["kind"] == "train")
    base = _settings(tmp_path / "run", summary["baselines"]["scratch-4"])
    assert first["skip_docs"] == 0 and second["skip_docs"] == first["end_position"] > 0
    assert second["end_position"] > first["end_position"] and base["skip_docs"] == 0
    assert first["eval"] == second["eval"] == base["eval"] >= 800
    # the same documents: the grown model is exact (new: zero), so it scores what its parent scored
    stages = [s for s in summary["stages"] if s["kind"] == "train"]
    assert abs(stages[1]["initial_eval_loss"] - stages[0]["final_eval_loss"]) < 1e-4
