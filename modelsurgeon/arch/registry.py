"""Find the ArchSpec for a checkpoint: from the table by model_type, or by detecting the
repeated layer pattern in tensor names for families the table does not have."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path

import yaml

from modelsurgeon.arch.spec import ArchSpec, Layout, split_layers
from modelsurgeon.arch.vlm import text_family, tower_spec, vlm_of
from modelsurgeon.errors import CheckpointError

SPEC_DIR = Path(__file__).parent / "specs"
# libyaml's loader when PyYAML was built with it: the table is parsed on every `surgeon` start,
# 15 files in ~12 ms with the pure-Python loader, ~2 ms with this one (same values).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Config keys that hold the layer count in families outside the table.
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        if key == "extends":
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


@cache
def _load_raw(name: str) -> dict:
    raw = yaml.load((SPEC_DIR / f"{name}.yaml").read_text(), Loader=YAML_LOADER)
    if "extends" in raw:
        return _merge(_load_raw(raw["extends"]), raw)
    return raw


@cache
def load_specs() -> dict[str, ArchSpec]:
    specs = {}
    for path in sorted(SPEC_DIR.glob("*.yaml")):
        spec = ArchSpec.model_validate(_load_raw(path.stem))
        specs[spec.model_type] = spec
    return specs


SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(load_specs()))


def _detect_spec(config: dict, names: list[str]) -> ArchSpec:
    """Infer layer prefix and layer-count key for a family outside the table (no roles)."""
    prefixes = Counter()
    for name in names:
        m = re.match(r"^(.*?\.)(\d+)\.", name)
        if m:
            prefixes[m.group(1)] += 1
    count_keys = {k: config[k] for k in LAYER_COUNT_KEYS if isinstance(config.get(k), int)}
    for prefix, _ in prefixes.most_common():
        by_index, _ = split_layers(names, prefix)
        for key, value in count_keys.items():
            if len(by_index) == value:
                return ArchSpec(
                    model_type=str(config.get("model_type", "unknown")),
                    architectures=list(config.get("architectures") or []),
                    num_layers_key=key,
                    layer_prefix=prefix,
                    known=False,
                )
    raise CheckpointError(
        f"model_type {config.get('model_type')!r} is not in the architecture table and no repeated "
        f"layer pattern in its tensor names matches a layer count in config.json "
        f"({', '.join(f'{k}={v}' for k, v in count_keys.items()) or 'no layer-count key found'})",
        hint=f"supported families: {', '.join(SUPPORTED_FAMILIES)}",
    )


def resolve_spec(config: dict, names: list[str]) -> ArchSpec:
    """The table's spec for this config's model_type, else one detected from tensor names; for
    a vision-language wrapper (vlm.yaml), its text family's spec moved under the wrapper's prefix."""
    vlm = vlm_of(config)
    if vlm is not None:
        family = text_family(vlm, vlm.text_config(config))
        text_spec = load_specs().get(family)
        if text_spec is None or text_spec.moe is not None:
            raise CheckpointError(
                f"{vlm.model_type}: its text tower is a {family!r}, which is not a dense family of the table",
                hint=f"supported text families: {', '.join(SUPPORTED_FAMILIES)}",
            )
        return tower_spec(vlm, text_spec)
    spec = load_specs().get(str(config.get("model_type")))
    return spec if spec is not None else _detect_spec(config, names)


def text_config_of(config: dict) -> dict:
    """The config that holds the layer count and widths: text_config for a vision-language wrapper."""
    vlm = vlm_of(config)
    return vlm.text_config(config) if vlm is not None else config


def layout_of(spec: ArchSpec, config: dict, names: list[str], where: str) -> Layout:
    """Split tensor names into layers and others; check the config's layer count agrees."""
    by_index, others = split_layers(names, spec.layer_prefix)
    declared = text_config_of(config).get(spec.num_layers_key)
    indices = sorted(by_index)
    if indices != list(range(len(indices))):
        missing = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
        raise CheckpointError(
            f"{where}: layer indices under '{spec.layer_prefix}' are not contiguous (missing {missing})",
            hint="the checkpoint is incomplete; re-export it or restore the missing shard",
        )
    if declared != len(indices):
        raise CheckpointError(
            f"{where}: config.json says {spec.num_layers_key}={declared} but the tensors hold "
            f"{len(indices)} layers under '{spec.layer_prefix}'",
            hint="config.json and the weights come from different models; fix the config or the weights",
        )
    return Layout(layers=[by_index[i] for i in indices], others=others)
