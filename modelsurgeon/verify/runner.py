"""The transformers side of verification: load one model, run every prompt once (logits and
each decoder layer's output) and continue it greedily. Models are loaded one at a time, so
peak memory is the larger model, not both."""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelsurgeon.errors import VerifyError
from modelsurgeon.verify.claims import Structure

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelRun:
    """One model's outputs on the prompts; tensors are float32 on CPU."""

    path: Path
    logits: list[torch.Tensor]  # per prompt: [T, vocab]
    hidden: list[list[torch.Tensor]]  # per prompt: [embeddings, after layer 0, 1, ...], each [T, hidden]
    greedy: list[list[int]]  # per prompt: the greedy continuation (EOS does not stop it)
    greedy_logits: list[torch.Tensor]  # per prompt: [N, vocab], the logits each greedy token was chosen from
    load_s: float = 0.0
    run_s: float = 0.0
    load_warnings: list[str] = field(default_factory=list)
    extra: object = None  # what run_full's `also` returned


def pick_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@contextmanager
def captured_warnings():
    """Collect what transformers logs (and Python warnings) while loading: the load report
    with missing/unexpected keys arrives this way, and --strict fails on any of it."""
    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("transformers")
    handler, level = _Collect(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
        records.extend(
            str(w.message) for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _loading_problems(info: dict) -> list[str]:
    out = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        values = sorted(str(v) for v in info.get(key) or [])
        if values:
            out.append(f"{key.replace('_', ' ')}: {', '.join(values[:5])}{' ...' if len(values) > 5 else ''}")
    return out


def _failure(path: Path, what: str, cause: str, problems: list[str], hint: str) -> VerifyError:
    """`problems`: the header-level findings that usually explain the failure."""
    known = "".join(f"\n  - {p}" for p in problems)
    return VerifyError(f"{path} {what} in transformers: {cause}{known}", hint=hint)


def load_failure(path: Path, exc: Exception, problems: list[str] = ()) -> VerifyError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = "fix the checkpoint (config.json and weights must agree); `surgeon inspect` shows both"
    return _failure(path, "does not load", first, problems, hint)


def auto_class(structure: Structure):
    """The transformers auto class that builds the whole checkpoint. A vision-language model is
    loaded whole (vision tower and projector too, so a key they lost is reported) and run on
    text-only prompts, which go through the text tower alone: the same function as its
    language model, and the class users deploy."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if structure.spec.wrapper else AutoModelForCausalLM


def layers_path(model: torch.nn.Module, structure: Structure) -> str:
    """Module path of the decoder layers in the loaded model. A vision-language checkpoint keeps
    its legacy tensor names (`language_model.model.layers.N`) while transformers' modules moved
    (`model.language_model.layers.N`), so the model names its own text decoder."""
    if not structure.spec.wrapper:
        return structure.layers_module
    decoder = model.get_decoder()
    return next(name for name, m in model.named_modules() if m is decoder) + ".layers"


def load_model(path: Path, structure: Structure, dtype: torch.dtype, device: torch.device, problems: list[str] = ()):
    """(model, load warnings); any load exception becomes a VerifyError naming `problems`,
    the header-level findings that usually explain it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with captured_warnings() as messages:
        try:
            model, info = auto_class(structure).from_pretrained(path, dtype=dtype, output_loading_info=True)
        except Exception as exc:  # transformers raises many kinds; all mean "does not load"
            raise load_failure(path, exc, problems) from None
    return model.to(device).eval(), _loading_problems(info) + messages


@contextmanager
def layer_outputs(model: torch.nn.Module, structure: Structure, sink: list[torch.Tensor]):
    """Record the input of the first decoder layer and every layer's output into `sink`."""
    layers = model.get_submodule(layers_path(model, structure))

    def grab(t):
        return (t[0] if isinstance(t, tuple) else t)[0].detach().float().cpu()

    hooks = [
        layers[0].register_forward_pre_hook(
            lambda m, args, kwargs: sink.append(grab(args[0] if args else kwargs["hidden_states"])), with_kwargs=True
        )
    ]
    hooks += [layer.register_forward_hook(lambda m, i, o: sink.append(grab(o))) for layer in layers]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def _prompt_and_greedy(model, structure: Structure, ids: list[int], n_new: int, device) -> tuple:
    """One prompt: logits and layer outputs on the prompt, then n_new greedy tokens through
    the KV cache."""
    hidden: list[torch.Tensor] = []
    with layer_outputs(model, structure, hidden):
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
    logits = out.logits[0].float().cpu()
    tokens, rows, row = [], [], logits[-1]
    for step in range(n_new):
        tokens.append(int(row.argmax()))
        rows.append(row)
        if step + 1 == n_new:
            break
        out = model(
            input_ids=torch.tensor([[tokens[-1]]], device=device), past_key_values=out.past_key_values, use_cache=True
        )
        row = out.logits[0, -1].float().cpu()
    return logits, hidden, tokens, torch.stack(rows) if rows else torch.empty(0, logits.shape[-1])


def run_failure(path: Path, exc: Exception, problems: list[str] = ()) -> VerifyError:
    hint = "config.json describes a model transformers cannot run; compare it with SOURCE's (`surgeon inspect`)"
    return _failure(path, "loads but does not run", f"{type(exc).__name__}: {str(exc).strip()[:300]}", problems, hint)


def run_full(
    path: Path,
    structure: Structure,
    prompts: list[list[int]],
    n_new: int,
    dtype: torch.dtype,
    device: torch.device,
    problems: list[str] = (),
    also=None,
) -> ModelRun:
    """Load the whole model, run the prompts, free it. `also(model)`, when given, runs on the
    loaded model before it is freed; its result lands in run.extra."""
    start = time.perf_counter()
    model, load_warnings = load_model(path, structure, dtype, device, problems)
    load_s = time.perf_counter() - start
    run = ModelRun(path, [], [], [], [], load_s=load_s, load_warnings=load_warnings)
    for ids in prompts:
        try:
            logits, hidden, tokens, rows = _prompt_and_greedy(model, structure, ids, n_new, device)
        except Exception as exc:  # modeling code raises many kinds; all mean "cannot run this config"
            raise run_failure(path, exc, problems) from None
        run.logits.append(logits)
        run.hidden.append(hidden)
        run.greedy.append(tokens)
        run.greedy_logits.append(rows)
    run.run_s = time.perf_counter() - start - load_s
    if also is not None:
        run.extra = also(model)
    del model
    return run
