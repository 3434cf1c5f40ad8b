"""Provenance written beside the weights: config.json (validated by transformers), the
surgeon.json manifest, and a model-card section describing the growth."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.errors import CheckpointError
from modelsurgeon.io.hf_files import copy_extra_files, file_sha256, headers_sha256, write_json

if TYPE_CHECKING:
    from modelsurgeon.engine import Prepared

MANIFEST = "surgeon.json"


def tool_version() -> str:
    try:
        return version("modelsurgeon")
    except PackageNotFoundError:
        return "0+unknown"


def validate_config(config: dict, num_layers_key: str, expected_layers: int) -> bool:
    """Load the rewritten config.json with transformers, as users will (it checks per-layer
    lists); False when transformers does not know the model type, so it was not validated."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if config.get("model_type") not in CONFIG_MAPPING:
        return False
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="surgeon-config-") as tmp:
        write_json(Path(tmp) / "config.json", config)
        try:
            cfg = AutoConfig.from_pretrained(tmp)
        except Exception as exc:  # transformers raises many kinds; all mean the same here
            raise CheckpointError(
                f"the rewritten config.json does not load in transformers: {exc}",
                hint="this is a bug in modelsurgeon or an inconsistent source config; please report it",
            ) from None
    if getattr(cfg, num_layers_key, None) != expected_layers:
        raise CheckpointError(f"rewritten config reads {num_layers_key}={getattr(cfg, num_layers_key, None)}, expected {expected_layers}")
    return True


def check_layer_count(config: dict, num_layers_key: str, expected_layers: int) -> bool:
    """The structural part of validate_config, without transformers: the layer count is set
    (per-layer lists were given that length by rewrite_config) and the config is valid JSON."""
    json.dumps(config)
    if config.get(num_layers_key) != expected_layers:
        raise CheckpointError(f"rewritten config reads {num_layers_key}={config.get(num_layers_key)}, expected {expected_layers}",
                              hint="this is a bug in modelsurgeon; please report it")  # fmt: skip
    return True


class ConfigCheck:
    """validate_config in a background thread: importing transformers (and torch) takes
    seconds of CPU, which overlaps the weight copy (its syscalls release the GIL). Without
    `with_transformers` (a pure byte copy, which otherwise never imports torch) only
    check_layer_count runs, at once."""

    def __init__(self, config: dict, num_layers_key: str, expected_layers: int, with_transformers: bool = True) -> None:
        self._outcome: list = []
        self._thread: threading.Thread | None = None
        if not with_transformers:
            self._outcome.append(check_layer_count(config, num_layers_key, expected_layers))
            return
        self._thread = threading.Thread(target=self._run, args=(config, num_layers_key, expected_layers), daemon=True)
        self._thread.start()

    def _run(self, *args) -> None:
        try:
            self._outcome.append(validate_config(*args))
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._outcome.append(exc)

    def result(self) -> bool:
        if self._thread is not None:
            self._thread.join()
        if isinstance(self._outcome[0], BaseException):
            raise self._outcome[0]
        return self._outcome[0]


def _source_manifest(src: Path) -> dict | None:
    path = src / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def build_manifest(prep: Prepared, shards: int) -> dict:
    ckpt = prep.ckpt
    fingerprint = {"config_sha256": file_sha256(ckpt.path / "config.json"), "headers_sha256": headers_sha256(ckpt.files)}
    if ckpt.index_path is not None:
        fingerprint["index_sha256"] = file_sha256(ckpt.index_path)
    stage = {
        "kind": "grow",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": prep.loaded.plan.name,
        "equivalence": prep.equivalence,
        "layers": [prep.layout.num_layers, len(prep.layer_map)],
    }
    previous = _source_manifest(ckpt.path)
    return {
        "tool": "modelsurgeon",
        "version": tool_version(),
        "source": {"path": str(ckpt.path.resolve()), "model_type": prep.spec.model_type, "num_layers": prep.layout.num_layers,
                   "tensors": len(ckpt.tensors), "bytes": ckpt.total_bytes, **fingerprint},
        "plan": {"name": prep.loaded.plan.name, "origin": prep.loaded.origin, "text": prep.loaded.source_text,
                 "mergekit_translation": prep.loaded.translation},
        "steps": [{"op": s.op, "layers_in": s.layers_in, "layers_out": s.layers_out, "equivalence": s.equivalence}
                  for s in prep.compiled.steps],
        "equivalence": prep.equivalence,
        "layer_map": [{"layer": j, "source": e.source, "scale": e.scale, "new": e.new} for j, e in enumerate(prep.layer_map)],
        "config_lists_remapped": prep.remapped_lists,
        "input_tensors": prep.accounting,
        "warnings": prep.warnings,
        "output": {"tensors": len(prep.tensors), "bytes": prep.bytes_out, "shards": shards,
                   "num_layers": len(prep.layer_map), "params": prep.params_out},
        "lineage": (previous or {}).get("lineage", []) + [stage],
    }  # fmt: skip


def model_card(prep: Prepared, source_card: str) -> str:
    m = prep.layer_map
    rows = "\n".join(f"| {j} | {e.source} | {e.scale:g} | {'yes' if e.new else ''} |" for j, e in enumerate(m))
    section = f"""
## Growth with modelsurgeon

This checkpoint was grown from `{prep.ckpt.path.name}` ({prep.spec.model_type}, {prep.layout.num_layers} layers,
{prep.params_in:,} parameters) to {len(m)} layers ({prep.params_out:,} parameters) with the plan
`{prep.loaded.plan.name}`. Equivalence class: **{prep.equivalence}** (exact: same outputs as the source;
approx: first-order equal; none: needs training to recover). Full provenance is in `surgeon.json`.

| output layer | source layer | branch scale | added |
|---|---|---|---|
{rows}
"""
    return (source_card.rstrip() + "\n" + section) if source_card else f"# {prep.loaded.plan.name}\n{section}"


def finish_output(prep: Prepared, tmp: Path, check: ConfigCheck) -> None:
    """Write everything but the weights into `tmp` (weights already there)."""
    skipped = copy_extra_files(prep.ckpt.path, tmp)
    if skipped:
        prep.warnings.append(f"sub-directories not copied (they may hold stale weights): {skipped}")
    write_json(tmp / "config.json", prep.config)
    if not check.result():
        prep.warnings.append(f"transformers does not know model_type {prep.spec.model_type!r}; config.json not validated")
    shards = len(list(tmp.glob("*.safetensors")))
    write_json(tmp / MANIFEST, build_manifest(prep, shards))
    card = prep.ckpt.path / "README.md"
    (tmp / "README.md").write_text(model_card(prep, card.read_text() if card.is_file() else ""))


def extend_lineage(src: Path, stage: dict, source: dict) -> dict:
    """The input's surgeon.json with `stage` appended to its lineage (every other field kept),
    or a new manifest whose source is `source` when the input has none."""
    previous = _source_manifest(src)
    if previous is None:
        return {"tool": "modelsurgeon", "version": tool_version(), "source": source, "lineage": [stage]}
    return {**previous, "lineage": previous.get("lineage", []) + [stage]}
