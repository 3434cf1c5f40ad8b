"""verify compares the right things: the layer map between the two checkpoints given (found in
GROWN's lineage by SOURCE's header fingerprint), at GROWN's dtype, and a SOURCE that is not in
GROWN's lineage is an error unless --expect says to compare anyway."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.convert import convert
from modelsurgeon.errors import VerifyError
from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan
from modelsurgeon.verify import verify_checkpoint

DOUBLE = "name: double\nsteps:\n  - op: interpolate\n    factor: 2\n    branch_scale: split\n"
PRO = "name: pro\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n"
FAST = dict(max_new_tokens=4)


@pytest.fixture(scope="module")
def chain(tiny, tmp_path_factory):
    """tiny -> grown (double, approx) -> grown-bf16; tiny -> pro (exact) -> pro-bf16."""
    root = tmp_path_factory.mktemp("lineage")
    src = tiny("llama")
    grow(src, parse_plan(DOUBLE), root / "out")
    convert(root / "out", root / "out-bf16", dtype="bfloat16")
    grow(src, parse_plan(PRO), root / "pro")
    convert(root / "pro", root / "pro-bf16", dtype="bfloat16")
    return src, root


def test_the_issues_command_passes(chain):
    """`verify out out-bf16 --expect exact --dtype bfloat16`: the growth's map is not applied to OUT."""
    _, root = chain
    result = CliRunner().invoke(
        app,
        [
            "verify",
            str(root / "out"),
            str(root / "out-bf16"),
            "--expect",
            "exact",
            "--dtype",
            "bfloat16",
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output


def test_parent_and_conversion_by_default(chain):
    """Without flags: the path OUT -> OUT-bf16 is a conversion (exact, identity map), at bfloat16."""
    _, root = chain
    report = verify_checkpoint(root / "out", root / "out-bf16", **FAST)
    assert report.passed, report.to_dict()
    assert report.equivalence == "exact" and report.origin == "surgeon.json lineage: convert"
    assert report.dtype == "bfloat16"
    assert "compared at bfloat16, GROWN's weight dtype (SOURCE's is float32)" in report.notes
    program = next(c for c in report.checks if c.name == "GROWN = layer map run on SOURCE")
    assert program.passed


def test_source_against_its_grown_and_converted_descendant(chain):
    """SOURCE -> grow -> convert: the growth's map and class, compared at GROWN's bfloat16."""
    src, root = chain
    report = verify_checkpoint(src, root / "pro-bf16", **FAST)
    assert report.passed, report.to_dict()
    assert report.equivalence == "exact" and report.origin == "surgeon.json lineage: grow -> convert"
    assert report.dtype == "bfloat16"
    approx = verify_checkpoint(src, root / "out-bf16", **FAST)
    assert approx.equivalence == "approx" and approx.passed, approx.to_dict()


def test_float32_still_available_and_tight(chain):
    """Forcing float32 compares the rounded bfloat16 weights with float32 bounds: it fails, as asked."""
    src, root = chain
    report = verify_checkpoint(src, root / "pro-bf16", dtype="float32", **FAST)
    assert report.dtype == "float32" and not report.passed


def test_source_outside_the_lineage_is_an_error(tiny, chain):
    other = tiny("llama", n_layers=3)  # headers fingerprint structure: another shape
    _, root = chain
    with pytest.raises(VerifyError, match="is not in GROWN's lineage") as info:
        verify_checkpoint(other, root / "pro", **FAST)
    assert str(root / "pro") in info.value.message and "--expect" in info.value.hint
    report = verify_checkpoint(other, root / "pro", expect="none", **FAST)
    assert "SOURCE is not in GROWN's surgeon.json lineage: no layer-map check" in report.notes
    assert not any(c.name == "GROWN = layer map run on SOURCE" for c in report.checks)


def test_cli_names_the_lineage_problem(tiny, chain):
    _, root = chain
    result = CliRunner().invoke(app, ["verify", str(tiny("llama", n_layers=3)), str(root / "pro")])
    assert result.exit_code == 6
    assert "not in GROWN's lineage" in " ".join(result.output.split())
