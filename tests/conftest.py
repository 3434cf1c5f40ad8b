"""Shared fixtures: tiny checkpoints of every family, built from config once per session."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from modelsurgeon.tiny import FAMILIES, build_tiny

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
