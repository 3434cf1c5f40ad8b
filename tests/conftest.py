"""Shared fixtures: tiny checkpoints of every family, built from config once per session."""

from __future__ import annotations

import logging
import os
from pathlib import Path

# One intra-op thread per torch process, set before torch loads (subprocesses inherit it): torch
# otherwise starts a thread per core, and on a machine shared with other jobs the suite then runs
# several times slower (spinning threads fighting for the same cores). SURGEON_TEST_THREADS=N overrides.
TEST_THREADS = int(os.environ.get("SURGEON_TEST_THREADS", "1"))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(TEST_THREADS)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(TEST_THREADS)

from modelsurgeon.tiny import FAMILIES, build_tiny  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(family, n_layers=4, **kw) -> checkpoint dir, cached per argument set."""
    cache: dict[tuple, Path] = {}

    def make(family: str = "llama", n_layers: int = 4, **kw) -> Path:
        key = (family, n_layers, tuple(sorted((k, str(v)) for k, v in kw.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{family}-{n_layers}")
            cache[key] = build_tiny(family, out / "model", n_layers=n_layers, **kw)
        return cache[key]

    return make


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def write_plan(directory: Path, text: str, name: str = "plan.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path
