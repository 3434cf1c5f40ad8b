"""What a grow writes beside the weights: config.json (validated by transformers), the
surgeon.json manifest of the growth, and a model-card section describing it."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.errors import CheckpointError
from modelsurgeon.io.hf_files import file_sha256, subdirectories, write_json
from modelsurgeon.io.reader import Checkpoint
from modelsurgeon.manifest import (
    GrowStage,
    Manifest,
    OutputRecord,
    PlanRecord,
    SourceRecord,
    finish_output,
    layer_record,
    now,
    read_manifest,
    source_record,
    tool_version,
)

if TYPE_CHECKING:
    from modelsurgeon.grow.engine import Prepared


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
    cfg = cfg.get_text_config()  # a vision-language model's layer count is its text tower's
    if getattr(cfg, num_layers_key, None) != expected_layers:
        raise CheckpointError(
            f"rewritten config reads {num_layers_key}={getattr(cfg, num_layers_key, None)}, expected {expected_layers}"
        )
    return True


def check_layer_count(config: dict, num_layers_key: str, expected_layers: int) -> bool:
    """The structural part of validate_config, without transformers: the layer count is set
    (per-layer lists were given that length by rewrite_config; a vision-language model's in its
    text_config) and the config is valid JSON."""
    json.dumps(config)
    found = config.get(num_layers_key, (config.get("text_config") or {}).get(num_layers_key))
    if found != expected_layers:
        raise CheckpointError(
            f"rewritten config reads {num_layers_key}={found}, expected {expected_layers}",
            hint="this is a bug in modelsurgeon; please report it",
        )
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


def _record(ckpt: Checkpoint, model_type: str, num_layers: int) -> SourceRecord:
    """A growth input with its fingerprints (config, safetensors headers, index)."""
    source = source_record(
        ckpt.path,
        ckpt.files,
        model_type=model_type,
        num_layers=num_layers,
        tensors=len(ckpt.tensors),
        bytes=ckpt.total_bytes,
    )
    if ckpt.index_path is not None:
        source = source.model_copy(update={"index_sha256": file_sha256(ckpt.index_path)})
    return source


def build_manifest(prep: Prepared, shards: int) -> Manifest:
    """The grow's manifest: its source(s) and the growth; the lineage of SOURCE's manifest, if any, continues."""
    ckpt = prep.ckpt
    source = _record(ckpt, prep.spec.model_type, prep.layout.num_layers)
    others = [_record(s.ckpt, prep.spec.model_type, s.layout.num_layers) for s in prep.sources[1:]]
    multi = {"models": others} if others else {}
    layer_map = [layer_record(j, e) for j, e in enumerate(prep.layer_map)]
    stage = GrowStage(
        kind="grow",
        created=now(),
        plan=prep.loaded.plan.name,
        equivalence=prep.equivalence,
        layers=(prep.layout.num_layers, len(prep.layer_map)),
        source=source,
        layer_map=layer_map,
        **multi,
    )
    previous = read_manifest(ckpt.path)
    plan = PlanRecord(
        name=prep.loaded.plan.name,
        origin=prep.loaded.origin,
        text=prep.loaded.source_text,
        mergekit_translation=prep.loaded.translation,
    )
    output = OutputRecord(
        tensors=len(prep.tensors),
        bytes=prep.bytes_out,
        shards=shards,
        num_layers=len(prep.layer_map),
        params=prep.params_out,
    )
    return Manifest(
        tool="modelsurgeon",
        version=tool_version(),
        source=source,
        plan=plan,
        steps=list(prep.compiled.steps),
        equivalence=prep.equivalence,
        layer_map=layer_map,
        **multi,
        config_lists_remapped=prep.remapped_lists,
        input_tensors=prep.accounting,
        warnings=prep.warnings,
        output=output,
        lineage=[*(previous.lineage if previous else []), stage],
    )


def model_card(prep: Prepared, source_card: str) -> str:
    m = prep.layer_map
    names = [s.ckpt.path.name for s in prep.sources] or [prep.ckpt.path.name]
    src = [f"{e.source}" + (f" of `{names[e.model]}`" if e.model else "") for e in m]
    rows = "\n".join(f"| {j} | {src[j]} | {e.scale:g} | {'yes' if e.new else ''} |" for j, e in enumerate(m))
    also = f" and layers of {', '.join(f'`{n}`' for n in names[1:])}" if len(names) > 1 else ""
    section = f"""
## Growth with modelsurgeon

This checkpoint was grown from `{prep.ckpt.path.name}`{also} ({prep.spec.model_type}, {prep.layout.num_layers} layers,
{prep.params_in:,} parameters) to {len(m)} layers ({prep.params_out:,} parameters) with the plan
`{prep.loaded.plan.name}`. Equivalence class: **{prep.equivalence}** (exact: same outputs as the source;
approx: first-order equal; none: needs training to recover). Full provenance is in `surgeon.json`.

| output layer | source layer | branch scale | added |
|---|---|---|---|
{rows}
"""
    return (source_card.rstrip() + "\n" + section) if source_card else f"# {prep.loaded.plan.name}\n{section}"


def finish_grow(prep: Prepared, tmp: Path, check: ConfigCheck) -> None:
    """Write everything but the weights into `tmp` (weights already there)."""
    skipped = subdirectories(prep.ckpt.path)
    if skipped:  # listed in the manifest's warnings, so found before it is built
        prep.warnings.append(f"sub-directories not copied (they may hold stale weights): {skipped}")
    if not check.result():
        prep.warnings.append(
            f"transformers does not know model_type {prep.spec.model_type!r}; config.json not validated"
        )
    card = prep.ckpt.path / "README.md"
    card_text = model_card(prep, card.read_text() if card.is_file() else "")
    manifest = build_manifest(prep, len(list(tmp.glob("*.safetensors"))))
    finish_output(tmp, prep.ckpt.path, manifest, prep.config, card_text)
