"""`surgeon progressive` without training: the FLOP accountant against a hand computation, the
stop-trigger logic on synthetic loss curves, and recipe errors raised before anything trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import RecipeError
from modelsurgeon.progressive.flops import lora_params, stage_flops
from modelsurgeon.progressive.init import counts_of_checkpoint
from modelsurgeon.progressive.planning import plan_recipe
from modelsurgeon.progressive.recipe import load_recipe, parse_recipe
from modelsurgeon.progressive.triggers import Plateau, StopDecider, Trigger, decide, du_tokens

# ---------------------------------------------------------------- FLOPs


def test_flops_match_a_hand_computation(tiny):
    """Tiny llama: hidden 32, 4 heads of 8 (2 kv heads), MLP 96, vocab 256, 3 layers."""
    model = tiny("llama", n_layers=3)
    config = json.loads((model / "config.json").read_text())
    h, inter, vocab, L = 32, 96, 256, 3
    kv = 2 * 8
    layer = h * h + h * kv + h * kv + h * h + 3 * h * inter  # q, k, v, o, gate, up, down
    head = vocab * h  # untied lm_head, or the tied embedding used as the head: counted once
    assert config["hidden_size"] == h and config["intermediate_size"] == inter
    counts = counts_of_checkpoint(model)
    seq, tokens = 16, 1000
    full = stage_flops(counts, tokens, seq, "full")
    assert full.total == tokens * (6 * (L * layer + head) + 12 * L * seq * h)

    r = 4
    adapters = L * r * ((h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + inter) + (inter + h))
    lora = stage_flops(counts, tokens, seq, "lora", lora_r=r)
    assert lora.lora_params == adapters
    assert lora.total == tokens * (4 * (L * layer + head + adapters) + 2 * adapters + 12 * L * seq * h)
    # counting the same model with the formula's parts: frozen base 4N, adapters 6 per parameter
    assert lora.per_token_dense == 4 * (L * layer + head) + 6 * adapters


def test_lora_params_equal_peft_trainable_count(tiny):
    """The accountant's adapter count is what peft actually creates."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = tiny("llama", n_layers=3)
    net = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model),
        LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    )
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert lora_params(counts_of_checkpoint(model), 4, None, 3) == trainable


def test_du_token_rule_reproduces_the_papers_worked_value():
    # Du et al. README: Llama2-7B trained on 2T tokens grows after d = 11.11B tokens.
    compute = 6 * 7e9 * 2e12
    assert du_tokens(7e9, compute) == pytest.approx(11.11e9, rel=0.02)


# ---------------------------------------------------------------- triggers


def _decider(triggers: list[dict], cap: int = 1000) -> StopDecider:
    return StopDecider([Trigger(**t) for t in triggers], cap_steps=cap, tokens_per_step=100)


PLATEAU = {"plateau": {"window": 5, "min_rel_improvement": 0.01, "patience": 2}}


def test_plateau_found_on_a_flattening_curve():
    losses = [1.0 + 2.0 * math.exp(-i / 8) for i in range(200)]
    step, reason = decide(_decider([PLATEAU]), losses, log_every=10)
    assert reason == "plateau"
    stopped = losses[step // 10 - 1]
    assert stopped - 1.0 < 0.1 * 2.0  # it stops once most of the drop is done ...
    assert step < 1000  # ... well before the cap


def test_plateau_not_found_on_a_steadily_falling_curve():
    losses = [10.0 * 0.99**i for i in range(100)]  # 5% per window of 5: never below 1%
    assert decide(_decider([PLATEAU]), losses, log_every=10) == (1000, "cap")


def test_plateau_needs_patience_in_a_row():
    # flat stretch of one window check, then a drop, then flat for good
    losses = [2.0] * 10 + [1.0] * 5 + [1.0] * 30
    state = _decider([{"plateau": {"window": 5, "min_rel_improvement": 0.01, "patience": 3}}])
    step, reason = decide(state, losses, log_every=1)
    # checks at 10 (strike 1), 11..15 improve (reset), 20 is the first window fully at 1.0 ...
    assert reason == "plateau" and step == 22


def test_cap_ends_a_stage_when_no_trigger_fires():
    losses = [5.0 - 0.01 * i for i in range(50)]
    assert decide(_decider([PLATEAU], cap=200), losses, log_every=10) == (200, "cap")


def test_first_of_fixed_tokens_and_du_rule():
    losses = [1.0] * 100
    d = _decider([{"tokens": 2500}, PLATEAU])
    assert decide(d, losses, log_every=10)[1] == "tokens"  # tokens at step 25 -> logged step 30
    du = StopDecider([Trigger(du_token_rule={})], 1000, 100, du_defaults=(1e6, 1e13))
    assert du.du_threshold(Trigger(du_token_rule={}).du_token_rule) > 1e11  # toy scale: far beyond any stage
    assert decide(du, [1.0] * 100, log_every=1) == (100, "cap")


def test_trigger_sets_exactly_one_condition():
    with pytest.raises(ValueError, match="exactly one"):
        Trigger(steps=3, plateau=Plateau())


# ---------------------------------------------------------------- recipe errors


def recipe_text(stages: str, baselines: str = "", layers: int = 2) -> str:
    return f"""name: t
init: {{family: llama, hidden_size: 16, intermediate_size: 32, num_hidden_layers: {layers}, num_attention_heads: 2,
        num_key_value_heads: 2, max_position_embeddings: 64}}
data: ["synthetic:arith:n=200,max_k=2"]
eval: {{arith: {{max_k: 3, per_k: 2}}}}
defaults: {{seq_len: 32, batch_size: 2, log_every: 1, save_every: 0, lr: 0.003}}
stages:
{stages}
{baselines}"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


GOOD = (
    "  - train: {method: full, steps: 3}\n  - grow: {steps: [{op: interpolate, factor: 2}]}\n"
    "  - train: {method: lora, steps: 2}"
)


@pytest.mark.parametrize(
    "stages, baselines, needles",
    [
        ("  - finetune: {steps: 3}", "", ["stages[0] (line 8)", "unknown stage kind 'finetune'"]),
        (
            "  - train: {method: full, steps: 3}\n  - grow: {steps: [{op: stack, factor: 2, layers: {middle: 4}}]}",
            "",
            ["stages[1].grow (line 9)", "does not fit the 2-layer model", "middle: 4"],
        ),
        (
            GOOD + "\n  - grow: {steps: [{op: drop, layers: [7]}]}",
            "",
            ["stages[3].grow", "4-layer model", "out of range"],
        ),
        ("  - train: {method: lora, steps: 3}", "", ["randomly initialised", "method full"]),
        ("  - train: {method: full, steps: 3}\n  - train: {method: new, steps: 2}", "", ["right after a grow stage"]),
        ("  - train: {method: full, steps: 3, lr: -1}", "", ["stages[0].train", "--lr"]),
        (
            "  - train: {method: full, steps: 1}",
            "baselines:\n  - {name: big, init: {num_hidden_layers: 8}, match: flops, train: {batch_size: 64}}",
            ["baselines[0]", "cannot be FLOP-matched"],
        ),
        (GOOD, "baselines:\n  - {name: b, init: {num_hidden_layers: 4}, train: {steps: 5}}", ["set by match: flops"]),
        (GOOD, "baselines:\n  - {name: b, init: {num_hidden_layers: 4}, match: time}", ["baselines[0].match", "flops"]),
    ],
    ids=[
        "unknown-kind",
        "plan-too-big",
        "plan-at-later-point",
        "lora-first",
        "new-without-grow",
        "bad-option",
        "baseline-unmatchable",
        "baseline-steps",
        "baseline-match",
    ],
)
def test_bad_recipes_fail_before_training(tmp_path, stages, baselines, needles):
    path = _write(tmp_path, recipe_text(stages, baselines))
    result = CliRunner().invoke(app, ["progressive", str(path), "-o", str(tmp_path / "run")])
    assert result.exit_code == RecipeError.exit_code, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert not (tmp_path / "run").exists()  # nothing written


def test_planned_layer_counts_and_budgets(tmp_path):
    loaded = load_recipe(_write(tmp_path, recipe_text(GOOD, "baselines:\n  - {name: b, init: {num_hidden_layers: 4}}")))
    plan = plan_recipe(loaded)
    assert [(s.name, s.n_layers) for s in plan.stages] == [("01-train", 2), ("02-grow", 4), ("03-train", 4)]
    assert plan.total_tokens == (3 + 2) * 2 * 32
    b = plan.baselines[0]
    assert abs(b.options.steps * b.per_step_flops - plan.total_flops) <= b.per_step_flops / 2


def test_recipe_needs_one_start_model():
    with pytest.raises(RecipeError, match="exactly one start model"):
        parse_recipe("name: t\ndata: [synthetic:arith]\nstages:\n  - train: {steps: 1}\n")


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent.parent / "plans" / "recipes").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_recipes_validate(path):
    plan = plan_recipe(load_recipe(path))
    assert plan.stages[-1].n_layers == 12 and plan.baselines


def test_start_checkpoint_first_growth_checked_against_its_headers(tiny, tmp_path):
    model = tiny("llama", n_layers=2)
    head = f"name: t\nstart: {model}\ndata: [synthetic:arith]\nstages:\n"
    ok = _write(
        tmp_path,
        head
        + "  - grow: {steps: [{op: interpolate, factor: 2, new: zero}]}\n  - train: {method: lora-new, steps: 2}\n",
    )
    plan = plan_recipe(load_recipe(ok))
    assert [(s.n_layers, s.new_layers, s.trained_layers) for s in plan.stages] == [(4, 2, None), (4, 0, 2)]
    bad = _write(tmp_path, head + "  - grow: {steps: [{op: stack, factor: 2, layers: {middle: 3}}]}\n")
    with pytest.raises(RecipeError, match="does not fit the 2-layer model"):
        plan_recipe(load_recipe(bad))


def test_callback_stops_the_trainer_on_a_plateau():
    from transformers import TrainerControl, TrainerState

    from modelsurgeon.progressive.triggers import make_callback

    record: dict = {}
    cb = make_callback(_decider([{"plateau": {"window": 2, "min_rel_improvement": 0.01, "patience": 1}}]), record)
    state, control = TrainerState(), TrainerControl()
    for step, loss in enumerate([3.0, 2.0, 1.5, 1.5, 1.5, 1.5], start=1):
        state.global_step = step
        cb.on_step_end(None, state, control)
        cb.on_log(None, state, control, logs={"loss": loss})
        if control.should_training_stop:
            break
    assert record == {"reason": "plateau", "step": 6} and control.should_evaluate
