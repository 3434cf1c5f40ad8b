"""Training methods are registered objects and TrainOptions is the one source of train-stage's
options: the CLI accepts exactly the registered methods, --help shows every field with its help,
a --config file supplies fields that flags override, and recipes build the same options."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import TrainError
from modelsurgeon.progressive.recipe import TrainSpec
from modelsurgeon.train import methods, stage
from modelsurgeon.train.methods import METHODS, get_method
from modelsurgeon.train.methods.full import FULL
from modelsurgeon.train.methods.lora import LORA
from modelsurgeon.train.methods.lora_new import LORA_NEW
from modelsurgeon.train.methods.new import NEW
from modelsurgeon.train.options import TrainOptions, load_options, make_options

DATA = "synthetic:arith:n=200"


def invoke(*args, env=None):
    return CliRunner().invoke(app, ["train-stage", *[str(a) for a in args]], env=env)


def flat(text: str) -> str:
    """Rendered help as one line: table borders dropped, wrapped cells joined."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.fixture
def captured(monkeypatch):
    """Run the CLI up to training: the options it would train with, nothing trained."""
    seen = []

    class Done(TrainError):
        pass

    def fake(model, output, options, **kwargs):
        seen.append(options)
        raise Done("stopped before training")

    monkeypatch.setattr(stage, "train_stage", fake)
    return seen


def test_registry_holds_one_object_per_method_module():
    assert METHODS == {"lora": LORA, "full": FULL, "new": NEW, "lora-new": LORA_NEW}
    assert [m.adapter for m in METHODS.values()] == [True, False, False, True]
    layers = {m.name: m.layers for m in METHODS.values()}
    assert layers == {"lora": "chosen", "full": "all", "new": "new", "lora-new": "new"}
    # only a LoRA base is frozen, so only it may be loaded in bfloat16
    assert [m.base_dtype(bf16=True) for m in METHODS.values()] == ["bfloat16", "float32", "float32", "bfloat16"]


@pytest.mark.parametrize("name", list(METHODS))
def test_cli_accepts_every_registered_method(tmp_path, captured, name):
    result = invoke(tmp_path / "model", "--data", DATA, "--steps", 1, "--method", name, "-o", tmp_path / "out")
    assert result.exit_code == TrainError.exit_code and "stopped before training" in result.output, result.output
    assert captured[0].train_method is METHODS[name]
    assert captured[0].learning_rate == METHODS[name].default_lr


def test_cli_rejects_an_unregistered_method_listing_the_registered_ones(tmp_path, captured):
    result = invoke(tmp_path / "model", "--data", DATA, "--steps", 1, "--method", "sgd", "-o", tmp_path / "out")
    assert result.exit_code == TrainError.exit_code and not captured
    assert "--method: unknown method 'sgd'; the registered methods are lora, full, new, lora-new" in flat(result.output)
    with pytest.raises(TrainError, match="unknown method 'dora'; the registered methods are lora, full, new, lora-new"):
        get_method("dora")


def test_help_lists_every_option_field_with_its_help_and_each_method():
    result = invoke("--help", env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"})
    assert result.exit_code == 0
    text = flat(result.output)
    for name, field in TrainOptions.model_fields.items():
        assert "--" + name.replace("_", "-") in text, name
        assert field.description and " ".join(field.description.split()) in text, name
    for m in METHODS.values():
        assert f"{m.name}: {m.summary}" in text
    assert "default by method: lora 2e-4, full 2e-5, new 1e-4, lora-new 2e-4" in text
    assert "[default: (16)]" in text  # lora_r's default, from the model
    assert "One of: cosine, linear, constant, wsd." in text  # a Literal's choices


def test_boolean_options_render_as_flags():
    lines = invoke("--help", env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"}).output.splitlines()
    for flag_name in ("--resume ", "--force ", "--bf16 ", "--share-duplicates "):
        (line,) = [ln for ln in lines if flag_name in ln]
        assert "<bool>" not in line, line
    assert any("--no-bf16" in ln for ln in lines)


def test_config_file_with_flags_overriding_it(tmp_path, captured):
    config = tmp_path / "stage.yaml"
    config.write_text(f"method: full\ndata: [{DATA}]\nsteps: 5\nlr: 1.0e-3\nbf16: true\ntargets: null\n")
    flags = ["--steps", 7, "--no-bf16", "--seed", 3]
    result = invoke(tmp_path / "model", "-o", tmp_path / "out", "--config", config, *flags)
    assert "stopped before training" in result.output, result.output
    got = captured[0]
    assert (got.method, got.data, got.lr) == ("full", [DATA], 1e-3)  # from the file
    assert (got.steps, got.bf16, got.seed) == (7, False, 3)  # flags win
    untouched = {"schedule", "batch_size", "lora_r", "eval_fraction", "save_every"}
    assert {k: getattr(got, k) for k in untouched} == {k: TrainOptions.model_fields[k].default for k in untouched}


def test_config_problems_name_the_file_and_key(tmp_path):
    config = tmp_path / "stage.yaml"
    config.write_text(f"data: [{DATA}]\nsteps: 0\nlora_rank: 8\n")
    with pytest.raises(TrainError) as info:
        load_options(config, {"method": "full"})
    assert f"{config}: steps: Input should be greater than or equal to 1" in info.value.message
    assert f"{config}: lora_rank: Extra inputs are not permitted" in info.value.message
    with pytest.raises(TrainError, match="--steps: Input should be greater"):  # the same bad value as a flag
        load_options(config, {"steps": 0})
    with pytest.raises(TrainError, match="--data: required: give the flag, or the field in a --config file"):
        load_options(None, {"steps": 1})
    config.write_text("- method: lora\n")
    with pytest.raises(TrainError, match="expected a mapping of option fields, got list"):
        load_options(config, {})


def test_text_forms_of_targets_and_layers_parse_as_on_the_command_line():
    opts = make_options(data=[DATA], steps=1, targets=["q,k", "down"], layers="{from: 1, to: 3}")
    assert opts.targets == ["q", "k", "down"]
    assert opts.layers == make_options(data=[DATA], steps=1, layers={"from": 1, "to": 3}).layers
    with pytest.raises(TrainError, match="'{from: 1}' is not a layer selection"):
        make_options(data=[DATA], steps=1, layers="{from: 1}")


def test_recipe_train_stage_and_cli_build_the_same_options(tmp_path, captured):
    invoke(tmp_path / "model", "-o", tmp_path / "out", "--data", DATA, "--method", "full", "--steps", 3)
    from_recipe = make_options(**TrainSpec.model_validate({"method": "full", "steps": 3}).options({}, [DATA]))
    assert from_recipe == captured[0]


def test_lazy_plan_names_still_import_from_the_package():
    assert methods.resolve_targets.__module__ == "modelsurgeon.train.methods.plan"
    with pytest.raises(AttributeError):
        methods.no_such_name  # noqa: B018
