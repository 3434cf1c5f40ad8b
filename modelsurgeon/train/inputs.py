"""What a stage checks and loads before any weights: MODEL's headers and surgeon.json (the
method's layers, the ramp's branches), every --data spec, the tokenizer files, then the train
and eval blocks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.arch.spec import ArchSpec, Layout
from modelsurgeon.data import build_blocks, parse_data_spec
from modelsurgeon.errors import TrainError
from modelsurgeon.io.reader import Checkpoint, open_checkpoint
from modelsurgeon.train.methods import MethodPlan, plan_method
from modelsurgeon.train.options import TrainOptions
from modelsurgeon.train.ramp import RampPlan, plan_ramp

# Any one of these lets AutoTokenizer build a tokenizer (fast, sentencepiece or BPE files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


@dataclass
class Setup:
    ckpt: Checkpoint
    spec: ArchSpec
    layout: Layout
    plan: MethodPlan
    ramp: RampPlan | None = None  # ramp_new: the new layers' branch modules and tensors


def read_setup(model: Path, options: TrainOptions) -> Setup:
    """Everything checkable from headers and surgeon.json, before tokenizer, data or weights."""
    ckpt = open_checkpoint(model)
    spec = resolve_spec(ckpt.config, ckpt.names)
    layout = layout_of(spec, ckpt.config, ckpt.names, str(model))
    ramp = plan_ramp(options.ramp_new and options.ramp_new.steps, model, spec, layout)
    return Setup(ckpt, spec, layout, plan_method(options, model, spec, layout), ramp)


def check_inputs(model: Path, options: TrainOptions) -> None:
    """What can be checked without the training stack: every --data spec (local paths exist,
    options parse) and that MODEL has tokenizer files."""

    for spec in options.data:
        parse_data_spec(spec)
    if not any((model / name).is_file() for name in TOKENIZER_FILES):
        raise TrainError(
            f"{model}: no tokenizer files ({', '.join(TOKENIZER_FILES)})",
            hint="copy the tokenizer files of the model MODEL was made from into MODEL",
        )


def load_data(model: Path, ckpt: Checkpoint, options: TrainOptions, seq_len: int, max_tokens: int):
    from transformers import AutoTokenizer

    specs = [parse_data_spec(s) for s in options.data]
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise TrainError(
            f"{model}: no usable tokenizer ({exc})",
            hint="copy the tokenizer files of the model MODEL was made from into MODEL",
        ) from None
    return build_blocks(
        specs,
        tokenizer,
        seq_len,
        max_tokens=max_tokens,
        eval_fraction=options.eval_fraction,
        eval_tokens=options.eval_tokens,
        skip_docs=options.skip_docs,
        seed=options.seed,
        text_field=options.text_field,
        max_positions=max_positions(ckpt.config),
    )


def max_positions(config: dict) -> int | None:
    return config.get("max_position_embeddings") or config.get("n_positions")
