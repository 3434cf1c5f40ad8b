"""CLI conventions: --version, flags shown as flags, dtype aliases, and one exit code per kind of
failure, as the README's table lists them."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer.main
from safetensors import safe_open
from typer.testing import CliRunner

from modelsurgeon import __version__, errors
from modelsurgeon.cli import app
from modelsurgeon.convert.options import parse_dtype
from modelsurgeon.io.dtype_rules import canonical_dtype

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"surgeon (modelsurgeon) {__version__}"


@pytest.mark.parametrize(
    "path,cmd", list(_commands(typer.main.get_command(app))), ids=lambda x: " ".join(x) if isinstance(x, tuple) else ""
)
def test_boolean_options_render_as_flags(path, cmd):
    help_text = run(*path, "--help").output
    flags = [p for p in cmd.params if isinstance(p, click.Option) and p.is_flag]
    for flag in flags:
        line = next(line for line in help_text.splitlines() if flag.opts[0] in line.split())
        assert "<bool>" not in line and "BOOLEAN" not in line, line
    assert "<bool>" not in help_text


def test_progressive_help_names_its_options():
    text = run("progressive", "--help").output
    assert "-o, --output" in text and "RUN_DIR" not in text


@pytest.mark.parametrize(
    "alias,name", [("bf16", "bfloat16"), ("FP16", "float16"), ("fp32", "float32"), ("float16", "float16")]
)
def test_dtype_aliases(alias, name):
    assert canonical_dtype(alias) == name and parse_dtype(alias) == parse_dtype(name)


def test_convert_accepts_bf16(tiny, tmp_path):
    result = run("convert", tiny("llama"), "-o", tmp_path / "o", "--dtype", "bf16")
    assert result.exit_code == 0, result.output
    shard = next((tmp_path / "o").glob("*.safetensors"))
    with safe_open(shard, "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
    bad = run("convert", tiny("llama"), "-o", tmp_path / "p", "--dtype", "fp8")
    assert bad.exit_code == errors.ConvertError.exit_code and "bfloat16 (bf16)" in bad.output


def _readme_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| ([^|]+)\|", table, flags=re.M)}


def test_readme_exit_code_table_matches_the_errors():
    codes = _readme_codes()
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.SurgeonError)]
    assert {c.exit_code for c in classes} | {0, 2} == set(codes)
    assert len({c.exit_code for c in classes}) == len(classes)  # one code per kind of failure
    assert 2 not in {c.exit_code for c in classes}  # 2 is the command line's usage error


def test_exit_codes_are_distinct_in_practice(tiny, tmp_path):
    codes = _readme_codes()
    usage = run("grow", tiny("llama"), "--no-such-option")
    bad_plan = tmp_path / "p.yaml"
    bad_plan.write_text("name: p\nsteps: [{op: interpolate, factor: 1}]\n")
    plan = run("grow", tiny("llama"), "--plan", bad_plan, "--dry-run")
    no_manifest = run("verify", tiny("llama"), tiny("llama"))
    got = {"usage": usage.exit_code, "plan": plan.exit_code, "manifest": no_manifest.exit_code}
    assert got == {"usage": 2, "plan": errors.PlanError.exit_code, "manifest": errors.MissingManifestError.exit_code}
    assert "usage" in codes[2].lower() and "plan" in codes[11].lower() and "surgeon.json" in codes[12]
    assert "check" in codes[errors.VerifyError.exit_code].lower()
