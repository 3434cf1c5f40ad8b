"""The non-weight files of a checkpoint directory: copying them, fingerprints, JSON writes."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Rewritten by the tool rather than copied.
REWRITTEN = ("config.json", "surgeon.json", "README.md")


def copy_extra_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer, generation config, chat template and every other top-level non-weight
    file; return the sub-directories skipped (they may hold stale weights, e.g. `original/`)."""
    for f in sorted(src.iterdir()):
        if f.is_file() and not (f.name.endswith(WEIGHT_SUFFIXES) or f.name in WEIGHT_INDEXES or f.name in REWRITTEN):
            shutil.copy2(f, dst / f.name)
    return subdirectories(src)


def subdirectories(path: Path) -> list[str]:
    return [f.name for f in sorted(path.iterdir()) if f.is_dir()]


def headers_sha256(files: list[Path]) -> str:
    """Fingerprint of the weights' structure: the raw safetensors headers, in file order."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            h.update(fh.read(n))
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
