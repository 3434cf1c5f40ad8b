"""A non-editable install (the wheel, in a fresh venv, run from another directory) finds its
shipped plans, recipes and the documents its hints name (slow: builds and installs a wheel)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _sh(*cmd, cwd=None, env=None) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only the wheel; the dependencies come from this interpreter's site-packages
    through a .pth line (not its .pth files, so the editable checkout stays invisible)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # a copy, so the build's build/ and egg-info stay out of the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("modelsurgeon", "plans", "docs"):  # symlinks kept: modelsurgeon/plans -> ../plans
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    _sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src)
    wheel = next((tmp / "dist").glob("modelsurgeon-*.whl"))
    venv = tmp / "venv"
    _sh(sys.executable, "-m", "venv", venv)
    site = Path(_sh(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _sh(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp / "elsewhere"
    work.mkdir()
    return wheel, venv, env, work


def test_wheel_carries_plans_recipes_and_docs(installed):
    names = set(zipfile.ZipFile(installed[0]).namelist())
    shipped = [p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("plans/**/*.yaml"), *ROOT.glob("docs/*.md")]]
    assert {f"modelsurgeon/{f}" for f in shipped} <= names


def test_installed_surgeon_uses_shipped_plans_from_anywhere(installed, tiny):
    _, venv, env, work = installed
    where = _sh(venv / "bin" / "python", "-c", "import modelsurgeon; print(modelsurgeon.__file__)", cwd=work, env=env)
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout
    surgeon = venv / "bin" / "surgeon"
    listing = _sh(surgeon, "plan", "list", cwd=work, env=env)
    assert "llama-pro" in listing and "seed-idea" in listing
    out = _sh(
        surgeon, "grow", tiny("llama", n_layers=8), "--plan", "plans/llama-pro.yaml", "--dry-run", cwd=work, env=env
    )
    assert "10 layers" in out or "-> 10" in out, out
    (work / "bad.yaml").write_text("name: bad\nsteps: [{op: interpolate, factor: 1}]\n")
    bad = subprocess.run([surgeon, "plan", "check", "bad.yaml"], cwd=work, env=env, capture_output=True, text=True)
    doc = re.search(r"see (\S+plan-format\.md)", bad.stderr).group(1)
    assert Path(doc).is_file() and Path(doc).is_relative_to(venv), bad.stderr
