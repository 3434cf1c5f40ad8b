"""Shipped plans, recipes and sweeps are found by name from any directory, listed with their
descriptions, and are package data (the same files as the repository's plans/)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import PlanError, RecipeError
from modelsurgeon.plan import load_plan
from modelsurgeon.plan.shipped import list_shipped, package_dir, resolve_shipped
from modelsurgeon.progressive.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_package_plans_are_the_repository_plans():
    assert package_dir("plans") == (ROOT / "plans").resolve()
    assert package_dir("docs") == (ROOT / "docs").resolve()
    assert {s.path for s in list_shipped("plan")} == set((ROOT / "plans").glob("*.yaml"))
    assert {s.path for s in list_shipped("recipe")} == set((ROOT / "plans" / "recipes").glob("*.yaml"))


def test_every_shipped_file_is_package_data():
    """A YAML under plans/ (or a doc) that no package-data pattern covers would be missing from the wheel."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "modelsurgeon"
    ]
    shipped = [p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("plans/**/*.yaml"), *ROOT.glob("docs/*.md")]]
    assert shipped and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in shipped), shipped


@pytest.mark.parametrize("text", ["double", "double.yaml", "plans/double.yaml"])
def test_plan_by_name_from_another_directory(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = load_plan(text)
    assert loaded.plan.name == "double" and Path(loaded.origin) == ROOT / "plans" / "double.yaml"


def test_a_file_of_that_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "double").write_text("name: mine\nsteps: [{op: drop, layers: [0]}]\n")
    assert load_plan("double").plan.name == "mine"


def test_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PlanError, match="no shipped plan of that name") as err:
        load_plan("dubble")
    assert "double, experts-2x, hypercloning-2x, llama-pro" in err.value.hint and "surgeon plan list" in err.value.hint
    assert resolve_shipped("../double", "plan") is None  # a path that is not a name is never looked up


def test_recipe_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_recipe("seed-idea").recipe.name == "seed-idea"
    assert load_recipe("plans/recipes/seed-idea-midas.yaml").recipe.name == "seed-idea-midas"
    with pytest.raises(RecipeError, match="no shipped recipe"):
        load_recipe("seed")


def test_plan_list_shows_names_and_descriptions():
    result = run("plan", "list")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.replace("│", " ").split())
    for s in [*list_shipped("plan"), *list_shipped("recipe")]:
        assert s.name in flat and s.description.split()[0] in flat
    assert "Duplicate every layer in place" in flat


def test_grow_with_a_plan_name(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("grow", tiny("llama"), "--plan", "llama-pro", "--dry-run")
    assert result.exit_code == 0, result.output
    bad = run("grow", tiny("llama"), "--plan", "no-such-plan", "--dry-run")
    assert bad.exit_code == PlanError.exit_code and "llama-pro" in bad.output
