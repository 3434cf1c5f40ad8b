"""Plans, recipes and sweeps shipped with the package, found by name (`--plan double`), and the
reference documents that error hints point to.

The files live in the repository's top-level `plans/` and `docs/`; `modelsurgeon/plans` and
`modelsurgeon/docs` are symlinks to them, so the wheel carries the same files as package data
and a checkout, an editable install and a wheel install all find them the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

# kind -> folder under plans/
KINDS = {"plan": "", "recipe": "recipes", "sweep": "sweeps"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Shipped:
    """One shipped YAML file: its kind, the name it is found by, where it is, what it does."""

    kind: str
    name: str
    path: Path
    description: str


def package_dir(folder: str) -> Path:
    """`plans` or `docs` inside the installed package (resolved: a checkout gives the repo's)."""
    return Path(str(files("modelsurgeon") / folder)).resolve()


def doc_path(name: str) -> Path:
    """A reference document by file name, e.g. doc_path("plan-format.md"), wherever installed."""
    return package_dir("docs") / name


def _folder(kind: str) -> Path:
    return package_dir("plans") / KINDS[kind]


def _description(path: Path) -> str:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return ""
    text = data.get("description", "") if isinstance(data, dict) else ""
    return " ".join(str(text).split())


def list_shipped(kind: str) -> list[Shipped]:
    """Every shipped file of a kind ("plan", "recipe" or "sweep"), sorted by name."""
    folder = _folder(kind)
    paths = (
        sorted((p for p in folder.glob("*") if p.suffix in _SUFFIXES and p.is_file()), key=lambda p: p.stem)
        if folder.is_dir()
        else []
    )
    return [Shipped(kind, p.stem, p, _description(p)) for p in paths]


def shipped_name(text: str, kind: str) -> str | None:
    """The name in `double`, `double.yaml` or `plans/double.yaml` (recipes: `plans/recipes/x.yaml`)."""
    name = str(text).replace("\\", "/")
    for prefix in ("plans/", f"{KINDS[kind]}/" if KINDS[kind] else None):
        if prefix and name.startswith(prefix):
            name = name[len(prefix) :]
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return name if _NAME.match(name) else None


def resolve_shipped(text: str | Path, kind: str) -> Path | None:
    """The file the user means: a path that exists, as given; else the shipped file of that name
    (so `--plan double` and the README's `--plan plans/double.yaml` work from any directory).
    None when neither exists."""
    path = Path(text)
    if path.is_file():
        return path
    name = shipped_name(str(text), kind)
    if name is None:
        return None
    found = [p for p in (_folder(kind) / f"{name}{s}" for s in _SUFFIXES) if p.is_file()]
    return found[0] if found else None


def missing_hint(kind: str) -> str:
    """Where to look when no file and no shipped name matched, naming what exists."""
    names = ", ".join(s.name for s in list_shipped(kind)) or "none"
    return f"pass the path of a {kind} YAML, or the name of a shipped {kind} ({names}; `surgeon plan list`)"


def shipped_table():
    """Every shipped plan, recipe and sweep with its description and the command that uses it."""
    from rich.table import Table

    t = Table(title=f"shipped with modelsurgeon ({package_dir('plans')})", title_justify="left")
    for col in ("kind", "name", "description"):
        t.add_column(col, overflow="fold")
    for kind in KINDS:
        for s in list_shipped(kind):
            t.add_row(kind, s.name, s.description)
    t.caption = (
        "use a name where a file is taken: surgeon grow MODEL --plan NAME; surgeon progressive NAME -o DIR. "
        f"Plan format: {doc_path('plan-format.md')}"
    )
    t.caption_justify = "left"
    return t
