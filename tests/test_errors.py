"""Bad input: each case gets a clear error naming the input, a non-zero exit from the CLI, and
leaves nothing behind (no output directory, no temporary directory, input unchanged)."""

from __future__ import annotations

import errno
import json
import shutil
import struct

import pytest
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import CheckpointError, OutputError, PlanError
from modelsurgeon.io import kcopy, writer

DOUBLE = "name: d\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def model(tiny, tmp_path):
    """A private, writable copy of a tiny 2-shard llama that a test may corrupt."""
    dst = tmp_path / "model"
    shutil.copytree(tiny("llama", max_shard_size="40KB"), dst)
    assert (dst / "model.safetensors.index.json").is_file()
    return dst


@pytest.fixture
def plan_file(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(DOUBLE)
    return path


def assert_nothing_written(tmp_path, out):
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def grow_fails(tmp_path, model, plan_file, expect: str, code: int):
    out = tmp_path / "out"
    result = run("grow", model, "--plan", plan_file, "-o", out)
    assert result.exit_code == code, result.output
    assert expect in result.output, result.output
    assert_nothing_written(tmp_path, out)
    return result.output


def shard_of(model):
    return sorted(model.glob("model-*.safetensors"))[0]


def test_missing_config(tmp_path, model, plan_file):
    (model / "config.json").unlink()
    grow_fails(tmp_path, model, plan_file, "no config.json", CheckpointError.exit_code)


def test_config_and_tensors_disagree_on_layer_count(tmp_path, model, plan_file):
    cfg = json.loads((model / "config.json").read_text())
    cfg["num_hidden_layers"] = 6
    (model / "config.json").write_text(json.dumps(cfg))
    grow_fails(tmp_path, model, plan_file, "num_hidden_layers=6 but the tensors hold 4 layers", 3)


def test_header_length_past_end_of_file(tmp_path, model, plan_file):
    f = shard_of(model)
    data = bytearray(f.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 2)
    f.write_bytes(bytes(data))
    grow_fails(tmp_path, model, plan_file, "exceeds the file size", 3)


def test_truncated_file(tmp_path, model, plan_file):
    f = shard_of(model)
    f.write_bytes(f.read_bytes()[:-100])
    grow_fails(tmp_path, model, plan_file, "past the end of the data", 3)


def test_header_not_json(tmp_path, model, plan_file):
    f = shard_of(model)
    data = bytearray(f.read_bytes())
    data[8:12] = b"\xff{[x"
    f.write_bytes(bytes(data))
    grow_fails(tmp_path, model, plan_file, "header is not valid JSON", 3)


def test_tiny_file(tmp_path, model, plan_file):
    shard_of(model).write_bytes(b"abc")
    grow_fails(tmp_path, model, plan_file, "shorter than the 8-byte header length", 3)


def test_index_names_missing_shard(tmp_path, model, plan_file):
    shard_of(model).unlink()
    grow_fails(tmp_path, model, plan_file, "names shard(s) that do not exist", 3)


def test_only_pickle_weights_point_to_convert(tmp_path, model, plan_file):
    for f in model.glob("*.safetensors*"):
        f.unlink()
    (model / "pytorch_model.bin").write_bytes(b"x")
    assert "surgeon convert" in grow_fails(tmp_path, model, plan_file, "only PyTorch pickle weights", 3)


@pytest.mark.parametrize(
    "text, expect",
    [
        ("name: d\nsteps:\n  - op: explode\n", "does not match any of the expected tags"),
        (
            "name: d\nsteps:\n  - op: interpolate\n    factor: 2\n    colour: red\n",
            "steps[0].colour (line 5): Extra inputs",
        ),
        ("name: d\nsteps:\n  - op: interpolate\n    factor: 1\n", "steps[0].factor (line 4)"),
        ("name: d\nsteps:\n  - op: drop\n    layers: [7]\n", "index 7 is out of range for 4 layers"),
        ("name: d\nsteps:\n  - op: interpolate\n    factor: 2\n    layers: {from: 2, to: 2}\n", "is empty"),
        ("name: d\nsteps:\n  - op: stack\n    factor: 2\n    layers: [0, 2]\n", "contiguous block"),
        (
            "name: d\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n    branch_scale: split\n",
            "no use with new: zero",
        ),
        ("name: d\nsteps:\n  - op: splice\n    trim: 4\n", "it must leave 1..3"),
        ("name: d\nsteps:\n  - op: drop\n    layers: all\n", "empty model"),
        ("name: d\nsteps: [\n", "not valid YAML"),
    ],
)
def test_bad_plans(tmp_path, model, text, expect):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    grow_fails(tmp_path, model, path, expect, PlanError.exit_code)


def test_all_plan_problems_reported_at_once(tmp_path, model):
    path = tmp_path / "bad.yaml"
    path.write_text("name: Bad\nsteps:\n  - op: interpolate\n    factor: 0\n  - op: nope\n  - op: drop\n")
    output = grow_fails(tmp_path, model, path, "4 problems in the plan", PlanError.exit_code)
    for where in ("name (line 1)", "steps[0].factor (line 4)", "steps[1] (line 5)", "steps[2].layers (line 6)"):
        assert where in output


def test_output_exists_needs_force(tmp_path, model, plan_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("grow", model, "--plan", plan_file, "-o", out)
    assert result.exit_code == OutputError.exit_code and "already exists" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    assert run("grow", model, "--plan", plan_file, "-o", out, "--force").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "surgeon.json").is_file()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_overlapping_input(tmp_path, model, plan_file, where):
    out = model if where == "same" else model / "grown"
    before = sorted(p.name for p in model.iterdir())
    result = run("grow", model, "--plan", plan_file, "-o", out, "--force")
    assert result.exit_code == OutputError.exit_code and "overlaps the input" in result.output
    assert sorted(p.name for p in model.iterdir()) == before


@pytest.mark.parametrize("failure", ["exception", "disk-full", "interrupt"])
def test_interrupted_write_leaves_nothing(tmp_path, model, plan_file, monkeypatch, failure):
    calls = []

    def flaky(real):  # the 5th piece written (a merged byte copy or a computed tensor) fails
        def write(*args):
            calls.append(args)
            if len(calls) == 5:
                if failure == "disk-full":
                    raise OSError(errno.ENOSPC, "No space left on device")
                raise KeyboardInterrupt if failure == "interrupt" else RuntimeError("boom")
            return real(*args)

        return write

    monkeypatch.setattr(kcopy.Copier, "segment", flaky(kcopy.Copier.segment))
    monkeypatch.setattr(writer, "_write_computed", flaky(writer._write_computed))
    from modelsurgeon.grow.engine import grow

    with pytest.raises((OSError, RuntimeError, KeyboardInterrupt)):
        grow(model, plan_file, tmp_path / "out")
    assert len(calls) == 5
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_not_enough_disk_space(tmp_path, model, plan_file, monkeypatch):
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 10))
    grow_fails(tmp_path, model, plan_file, "not enough disk space", OutputError.exit_code)


def test_unknown_family_copies_but_refuses_scales(tmp_path, model):
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "my_custom_lm"
    (model / "config.json").write_text(json.dumps(cfg))
    copy_plan = tmp_path / "copy.yaml"
    copy_plan.write_text("name: c\nsteps:\n  - op: stack\n    factor: 2\n")
    result = run("grow", model, "--plan", copy_plan, "-o", tmp_path / "copied")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "copied" / "config.json").read_text())
    assert written["num_hidden_layers"] == 8
    zero_plan = tmp_path / "zero.yaml"
    zero_plan.write_text(DOUBLE)
    output = grow_fails(tmp_path, model, zero_plan, "not in the architecture table", PlanError.exit_code)
    assert "llama" in output and "gpt_neox" in output
