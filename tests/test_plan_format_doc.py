"""The plan-format contract's examples work verbatim (PLAN_FORMAT.md in the shared design docs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan

DOC = Path(__file__).resolve().parents[2] / "shared" / "design" / "PLAN_FORMAT.md"


def yaml_blocks() -> list[str]:
    if not DOC.is_file():
        return []
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.skipif(not DOC.is_file(), reason=f"design docs not beside the checkout ({DOC})")
@pytest.mark.parametrize("i", range(2))
def test_doc_examples_apply(tiny, tmp_path, i):
    block = yaml_blocks()[i]
    text = block if block.lstrip().startswith(("#", "name")) else f"name: doc-{i}\nsteps:\n{block}"
    loaded = parse_plan(text, f"PLAN_FORMAT.md block {i}")
    prep = grow(tiny("llama"), loaded, tmp_path / "out")
    assert prep.equivalence in ("exact", "approx")
