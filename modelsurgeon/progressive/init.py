"""The start model of a recipe: a from-scratch model built from a transformers config class
(random init, seeded) with a char-level tokenizer (arith, ascii) or a tokenizer directory, or an
existing checkpoint. Also the parameter counts of either, from shapes alone."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.data.arith import arith_tokenizer
from modelsurgeon.data.chartok import ascii_tokenizer
from modelsurgeon.io.reader import open_checkpoint
from modelsurgeon.io.writer import atomic_directory
from modelsurgeon.progressive.flops import ArchCounts, arch_counts


class InitModel(BaseModel):
    """`init:` in a recipe. Every key besides family, tokenizer and seed is a config field of the
    family's transformers config class (hidden_size, num_hidden_layers, intermediate_size, ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    family: str = Field(pattern=r"^[a-z0-9_]+$")
    tokenizer: str = "arith"  # "arith", "ascii" (printable ASCII + newline, for dm-math) or a tokenizer directory
    seed: int = 0

    @property
    def config_fields(self) -> dict:
        return dict(self.model_extra or {})


def load_tokenizer(spec: str, base: Path):
    if spec == "arith":
        return arith_tokenizer()
    if spec == "ascii":
        return ascii_tokenizer()
    from transformers import AutoTokenizer

    path = Path(spec) if Path(spec).is_absolute() else base / spec
    return AutoTokenizer.from_pretrained(path)


def init_config(init: InitModel, tokenizer):
    """The family's config with the recipe's fields; ValueError naming the problem if it is not one."""
    from transformers import CONFIG_MAPPING

    if init.family not in CONFIG_MAPPING:
        raise ValueError(f"family {init.family!r} is not a transformers model_type")
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    try:
        config = CONFIG_MAPPING[init.family](**{"vocab_size": len(tokenizer), **ids, **init.config_fields})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{init.family} config: {exc}") from None
    unknown = [k for k in init.config_fields if not hasattr(config, k)]
    if unknown:
        raise ValueError(f"{init.family} config has no field(s) {', '.join(unknown)}")
    return config


def _meta_model(config):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no random draws
        return AutoModelForCausalLM.from_config(config)


def counts_of_config(config) -> ArchCounts:
    """Counts of the model a config builds (named_parameters drops the tied head, as saving does)."""
    model = _meta_model(config)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    cfg = config.to_dict()
    spec = resolve_spec(cfg, list(shapes))
    return arch_counts(spec, layout_of(spec, cfg, list(shapes), "init"), shapes, cfg)


def counts_of_checkpoint(path: Path) -> ArchCounts:

    ckpt = open_checkpoint(path)
    spec = resolve_spec(ckpt.config, ckpt.names)
    layout = layout_of(spec, ckpt.config, ckpt.names, str(path))
    return arch_counts(spec, layout, {n: tuple(t.shape) for n, t in ckpt.tensors.items()}, ckpt.config)


def build_init(init: InitModel, out: Path, base: Path) -> Path:
    """Write the from-scratch model and its tokenizer to `out` atomically."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(init.tokenizer, base)
    config = init_config(init, tokenizer)
    torch.manual_seed(init.seed)
    model = AutoModelForCausalLM.from_config(config)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(config, key))
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
