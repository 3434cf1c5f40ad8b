"""Training under FSDP (FSDP2 where accelerate supports it) or DeepSpeed ZeRO through
`accelerate launch`: parameters and optimizer state are sharded across processes, but writing
OUT reads them whole. `gather` collects them on the main process (a collective: every process
calls it) into an unsharded copy of the model and a plain table of AdamW moments, after which
the streaming writer runs exactly as in a single-process stage."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelsurgeon.errors import TrainError

if TYPE_CHECKING:
    import torch

Moments = dict[str, tuple["torch.Tensor", "torch.Tensor"]]  # param name -> (exp_avg, exp_avg_sq)
log = logging.getLogger(__name__)


def check_engine(share_duplicates: bool) -> None:
    """Before any weight is loaded: what `accelerate launch`'s config asks for must be usable."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise TrainError(
            "the accelerate config selects DeepSpeed, but the deepspeed package is not installed",
            hint="pip install deepspeed (it needs a CUDA toolchain), or use an FSDP config",
        )
    if (deepspeed or fsdp) and share_duplicates:
        raise TrainError(
            "--share-duplicates ties one tensor to several layers, which FSDP and DeepSpeed cannot shard",
            hint="drop --share-duplicates under FSDP/DeepSpeed (sharding spreads the memory anyway)",
        )


def is_sharded(trainer) -> bool:
    return bool(trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)


@dataclass
class Gathered:
    model: torch.nn.Module  # an unsharded copy with the trained values, on the main process's CPU
    moments: Moments | None = None  # None: the engine's optimizer state could not be gathered


def adam_moments(model: torch.nn.Module, optimizer) -> Moments:
    """AdamW's moments of each trainable parameter of an unsharded model, by parameter name."""
    out: Moments = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p) if p.requires_grad else None
        if state and "exp_avg" in state:
            out[name] = (state["exp_avg"], state["exp_avg_sq"])
    return out


def _fsdp_moments(trainer) -> Moments:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import unwrapped_optimizer

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(trainer.model_wrapped, unwrapped_optimizer(trainer), options=options)["state"]
    return {name: (s["exp_avg"], s["exp_avg_sq"]) for name, s in state.items() if "exp_avg" in s}


@contextmanager
def _plain_construction():
    """Build a model unpartitioned even while a ZeRO-3 Trainer is alive: transformers otherwise
    wraps from_pretrained in deepspeed.zero.Init, a collective that only the main process would
    enter here (a deadlock: seen with 2 CPU processes, DeepSpeed 0.19.8)."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def gather(trainer, rebuild: Callable[[], torch.nn.Module]) -> Gathered | None:
    """The full model (and, under FSDP, the AdamW moments) on the main process; None elsewhere.
    `rebuild()` makes a fresh unsharded model of the same structure to load the values into."""
    accelerator = trainer.accelerator
    state = accelerator.get_state_dict(trainer.model_wrapped)  # full on the main process; FSDP: a collective
    moments = _fsdp_moments(trainer) if trainer.is_fsdp_enabled else None
    if not accelerator.is_main_process:
        return None
    with _plain_construction():
        model = rebuild()
    result = model.load_state_dict({k: v.to("cpu") for k, v in state.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TrainError(
            f"the gathered state dict does not fit the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}",
            hint="a bug in modelsurgeon's FSDP/DeepSpeed support; please report it with the accelerate config",
        )
    if moments is None:
        log.warning(
            "DeepSpeed partitions AdamW state its own way: OUT/optimizer/ is not written "
            "(--carry-optimizer needs it; the Trainer checkpoints for --resume are unaffected)"
        )
    return Gathered(model, moments)


def close_process_group() -> None:
    """Tear down the process group `accelerate launch` set up, before the interpreter exits: left
    to exit, a DeepSpeed ZeRO-3 worker on CPU intermittently aborted ("terminate called without
    an active exception", SIGABRT) after OUT was written, failing the launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
