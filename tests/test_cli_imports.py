"""Import hygiene of the `surgeon` process itself: a depth growth made only of byte copies runs at
disk speed, so the CLI must not pay for torch, transformers or numpy (torch alone made importing
cli.py take 1.1 s instead of 0.19 s on the loaded 2-core VM, next to 1.5 s for `cp -r` + `sync`
of a 1B model's splice) anywhere on its path: module imports of cli.py (every command is built
for --help), the grow command, the writer, the provenance files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PLANS = Path(__file__).parent.parent / "plans"
HEAVY = ("torch", "transformers", "numpy")
# `python -X importtime` writes one line per module imported: "import time: self | cumulative | name".
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| (?P<indent>\s*)(?P<name>\S+)$")


def imported_modules(stderr: str) -> set[str]:
    return {m["name"] for m in map(IMPORT_LINE.match, stderr.splitlines()) if m}


def heavy_imports(stderr: str) -> list[str]:
    """The heavy packages among the imports (top-level names: `torch`, not its 900 submodules)."""
    return sorted({n.split(".")[0] for n in imported_modules(stderr)} & set(HEAVY))


def surgeon(*args: object) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter, as the console script runs it, with its imports listed."""
    cmd = [sys.executable, "-X", "importtime", "-m", "modelsurgeon", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_importtime_lines_are_parsed():
    """The parser must see the modules a real run imports, or the test below could never fail."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import json.decoder"], capture_output=True, text=True, check=True
    )
    assert {"json", "json.decoder"} <= imported_modules(done.stderr)
    assert heavy_imports("import time:       120 |     893886 |   torch\n") == ["torch"]


@pytest.mark.parametrize("shard", ["5GB", "40KB"], ids=["one-shard", "parallel-shards"])
def test_pure_copy_cli_grow_imports_no_torch_transformers_numpy(tiny, tmp_path, shard):
    out = tmp_path / "out"
    done = surgeon(
        "grow", tiny("llama", n_layers=8), "--plan", PLANS / "solar.yaml", "-o", out, "--max-shard-size", shard
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert heavy_imports(done.stderr) == []
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 12
    shards = len(list(out.glob("*.safetensors")))
    assert shards == 1 if shard == "5GB" else shards > 1  # > 1: the threaded writer ran
