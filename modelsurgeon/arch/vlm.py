"""Vision-language models (Qwen2-VL, Qwen2.5-VL, Gemma 3, LLaVA): growth applies to the text
tower, a family of the table under a key prefix with its config nested in `text_config`; the
vision tower and projector are byte-copied, except the projector tensors that write the text
hidden size (`vlm.yaml`), which widen with it so that image features land in the widened stream."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from modelsurgeon.arch.spec import ArchSpec
from modelsurgeon.errors import CheckpointError

TABLE = Path(__file__).parent / "vlm.yaml"
PROJECTOR_ROLES = {"out": "proj_out", "out_t": "proj_out_t", "mid": "proj_mid"}


class VlmSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model_type: str
    prefix: str
    projector: dict[str, Literal["out", "out_t", "mid"]] = {}
    hidden_keys: list[str] = []
    text_families: dict[str, str] = {}

    def text_config(self, config: dict) -> dict:
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise CheckpointError(
                f"a {self.model_type} config.json needs a text_config object",
                hint="re-export the model's config.json with transformers",
            )
        return text

    def nest(self, config: dict, text: dict, hidden: int | None) -> dict:
        """`config` with its text_config replaced by `text`, and the hidden-size copies set."""
        out = copy.deepcopy(config)
        out["text_config"] = text
        for path in self.hidden_keys if hidden is not None else []:
            *parents, key = path.split(".")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            node[key] = hidden
        return out


@cache
def vlm_specs() -> dict[str, VlmSpec]:
    raw = yaml.safe_load(TABLE.read_text())
    return {name: VlmSpec(model_type=name, **fields) for name, fields in raw.items()}


def vlm_of(config: dict) -> VlmSpec | None:
    return vlm_specs().get(str(config.get("model_type")))


def text_family(vlm: VlmSpec, text: dict) -> str:
    name = str(text.get("model_type"))
    return vlm.text_families.get(name, name)


def tower_spec(vlm: VlmSpec, text_spec: ArchSpec) -> ArchSpec:
    """The text family's spec moved under the wrapper's prefix; projector tensors get their
    width roles, and every other non-layer tensor the role `vision` (byte-copied)."""
    p = vlm.prefix
    globals_ = {p + m: r for m, r in text_spec.globals.items()}
    globals_.update({m: PROJECTOR_ROLES[kind] for m, kind in vlm.projector.items()})
    return text_spec.model_copy(
        update={
            "layer_prefix": p + text_spec.layer_prefix,
            "globals": globals_,
            "other_role": "vision",
            "wrapper": vlm.model_type,
        }
    )
