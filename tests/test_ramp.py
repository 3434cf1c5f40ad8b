"""Gradual DropIn (`ramp_new`): a grown model ramped at s = 0 is its parent; hooks and folds agree
for every kind of branch; the written checkpoint computes what the ramped model computed at its
final s, whether training stopped before the ramp's end (s < 1) or after it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, TrainerCallback
from typer.testing import CliRunner

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.cli import app
from modelsurgeon.errors import MissingManifestError
from modelsurgeon.grow.engine import grow
from modelsurgeon.io.reader import open_checkpoint
from modelsurgeon.ops.fold import fold_branch_scale
from modelsurgeon.train import make_options, train_stage
from modelsurgeon.train.ramp import BranchRamp, plan_ramp

COPIES = "name: copies\nsteps:\n  - op: interpolate\n    factor: 2\n"  # plain copies, marked new, unscaled
BASE = {"data": ["synthetic:arith:n=200"], "seq_len": 32, "batch_size": 4, "log_every": 1, "save_every": 0}
IDS = torch.randint(4, 200, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grown(tiny, tmp_path_factory):
    """grown(family) -> (parent, child): a 2-layer tiny model and its 4-layer copy-grown child."""
    cache = {}

    def make(family):
        if family not in cache:
            root = tmp_path_factory.mktemp(f"ramp-{family}")
            (root / "plan.yaml").write_text(COPIES)
            parent = tiny(family, n_layers=2)
            grow(parent, root / "plan.yaml", root / "child")
            cache[family] = parent, root / "child"
        return cache[family]

    return make


def ramp_plan(model_dir, steps=10):
    ckpt = open_checkpoint(model_dir)
    spec = resolve_spec(ckpt.config, ckpt.names)
    return plan_ramp(steps, model_dir, spec, layout_of(spec, ckpt.config, ckpt.names, str(model_dir)))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", ["llama", "gpt2", "olmo2", "gemma2"])  # multiply, Conv1D, gain, offset_gain
def test_ramp_at_zero_is_the_parent_and_hooks_equal_folds(grown, family, tmp_path):
    parent, child = grown(family)
    plan = ramp_plan(child)
    assert len(plan.modules) == 4 and len(plan.folds) >= 4  # 2 new layers x 2 branches (+ biases)
    model = AutoModelForCausalLM.from_pretrained(child).eval()
    unramped = logits(model)
    ramp = BranchRamp(plan)
    ramp.attach(model)
    ramp.set_step(0)
    parent_logits = logits(AutoModelForCausalLM.from_pretrained(parent).eval())
    assert (unramped - parent_logits).abs().max() > 1e-3  # the copies do change the function
    torch.testing.assert_close(logits(model), parent_logits, rtol=1e-5, atol=1e-5)

    ramp.set_step(3)  # s = 0.3: the hooked model equals the checkpoint with 0.3 folded in
    hooked = logits(model)
    tensors = load_file(child / "model.safetensors")
    for name, fold in plan.folds.items():
        tensors[name] = fold_branch_scale(tensors[name], fold, name.endswith(".bias"), 0.3)
    folded_dir = tmp_path / "folded"
    folded_dir.mkdir()
    for f in child.iterdir():
        if f.suffix == ".json" or f.name.startswith("tokenizer"):
            (folded_dir / f.name).write_bytes(f.read_bytes())
    save_file(tensors, folded_dir / "model.safetensors", metadata={"format": "pt"})
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(folded_dir).eval()), hooked, rtol=1e-5, atol=1e-5
    )
    ramp.detach()
    torch.testing.assert_close(logits(model), unramped)


def test_scale_rises_linearly_and_stops_at_one(grown):
    ramp = BranchRamp(ramp_plan(grown("llama")[1], steps=4))
    assert [(ramp.set_step(t), ramp.scale)[1] for t in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


class Capture(TrainerCallback):
    """Logits of the training model at its first step (s = 0) and after its last (final s)."""

    def __init__(self):
        self.first = self.last = None
        self.trained = {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.first is None:
            self.first = logits(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.last = logits(model)
        self.trained = {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("method", "steps", "ramp_steps", "final_s"),
    [
        ("full", 4, 10, 0.4),  # stopped before the ramp's end: s = 0.4 folded into the weights
        ("lora-new", 4, 10, 0.4),  # LoRA merged first, then folded
        ("new", 4, 2, 1.0),  # the ramp ended: s = 1, the trained weights as they are
    ],
)
def test_written_checkpoint_computes_the_ramped_model(grown, tmp_path, method, steps, ramp_steps, final_s):
    parent, child = grown("llama")
    capture = Capture()
    options = make_options(method=method, lr=5e-3, steps=steps, ramp_new={"steps": ramp_steps}, **BASE)
    train_stage(child, tmp_path / "out", options, callbacks=(capture,))
    torch.testing.assert_close(
        capture.first, logits(AutoModelForCausalLM.from_pretrained(parent).eval()), rtol=1e-5, atol=1e-5
    )
    written = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert (capture.last - capture.first).abs().max() > 1e-3  # training and the ramp changed the function
    torch.testing.assert_close(logits(written), capture.last, rtol=1e-4, atol=1e-4)
    if method == "full":  # the fold is what makes them agree: new layers' o_proj is s x the trained one
        trained = capture.trained["model.layers.1.self_attn.o_proj.weight"]
        out = load_file(tmp_path / "out" / "model.safetensors")
        torch.testing.assert_close(out["model.layers.1.self_attn.o_proj.weight"], final_s * trained)
        torch.testing.assert_close(
            out["model.layers.0.self_attn.o_proj.weight"], capture.trained["model.layers.0.self_attn.o_proj.weight"]
        )


def test_ramp_needs_new_layers(tiny, tmp_path):
    options = make_options(method="full", steps=1, ramp_new={"steps": 5}, **BASE)
    with pytest.raises(MissingManifestError, match="no surgeon.json"):
        train_stage(tiny("llama", n_layers=2), tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


def test_cli_ramp_new(grown, tmp_path):
    child = grown("llama")[1]
    result = CliRunner().invoke(
        app,
        [
            "train-stage",
            str(child),
            "--data",
            "synthetic:arith:n=200",
            "--method",
            "full",
            "--steps",
            "1",
            "--ramp-new",
            "0",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code != 0 and "ramp-new.steps" in result.output
    result = CliRunner().invoke(
        app,
        [
            "train-stage",
            str(child),
            "--data",
            "synthetic:arith:n=200",
            "--method",
            "full",
            "--steps",
            "2",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--ramp-new",
            "4",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert '"ramp_new": {\n' in (tmp_path / "o" / "surgeon.json").read_text()


RECIPE = """name: t
init: {{family: llama, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
        num_key_value_heads: 2, max_position_embeddings: 64, tokenizer: ascii}}
data: ["synthetic:arith:n=200,max_k=2"]
defaults: {{seq_len: 32, batch_size: 2, log_every: 1, save_every: 0, lr: 0.003}}
stages:
  - train: {{method: full, steps: 3{first}}}
  - grow: {{steps: [{{op: interpolate, factor: 2}}]}}
  - train: {{method: full, steps: 2, ramp_new: {{steps: 2}}}}
"""


def test_recipes_take_ramp_new_only_after_a_grow(tmp_path):
    from modelsurgeon.progressive.planning import plan_recipe
    from modelsurgeon.progressive.recipe import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(first=""))
    plan = plan_recipe(load_recipe(path))
    assert plan.stages[2].options.ramp_new.steps == 2
    path.write_text(RECIPE.format(first=", ramp_new: {steps: 2}"))
    result = CliRunner().invoke(app, ["progressive", str(path), "-o", str(tmp_path / "run")])
    assert result.exit_code != 0 and "stages[0].train" in result.output and "right after a grow" in result.output
    assert not (tmp_path / "run").exists()
