"""The plan format reference (docs/plan-format.md, in the repository and in the wheel): every
YAML example applies verbatim and gets the equivalence class its comment states."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan
from modelsurgeon.plan.shipped import doc_path

DOC = Path(__file__).resolve().parents[1] / "docs" / "plan-format.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_is_the_one_the_package_points_to():
    assert doc_path("plan-format.md") == DOC and len(BLOCKS) >= 8


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_doc_examples_apply(tiny, tmp_path, i):
    block = BLOCKS[i]
    claimed = re.search(r"# equivalence: (\w+)", block).group(1)
    text = f"name: doc-{i}\nsteps:\n{block}" if block.split("\n", 1)[1].startswith("  - op:") else block
    loaded = parse_plan(text, f"docs/plan-format.md block {i}")
    prep = grow(tiny("llama"), loaded, tmp_path / "out")
    assert prep.equivalence == claimed
    assert prep.params_out != prep.params_in
