"""Layer-at-a-time runs for models that do not fit in memory: at most one decoder layer's
weights are in memory at once, next to the embeddings and the head.

The model is built on the meta device and its decoder layers are swapped for stubs. One
forward pass per prompt with the stubs records what the model's own code passes each layer
(position embeddings, the causal or sliding-window mask of that layer's kind, ...) and the
embeddings, and stops. Each real layer is then loaded from the safetensors files, run on the
hidden states of all prompts, and freed. A last pass lets the model's own code apply the final
norm and head (and family quirks such as logit soft-capping) to the last layer's output.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from modelsurgeon.errors import VerifyError
from modelsurgeon.verify.claims import Structure
from modelsurgeon.verify.runner import ModelRun, auto_class, captured_warnings, layers_path, load_failure, run_failure


class _Stop(Exception):
    """Raised by the last stub while recording: the rest of the forward pass is not needed."""


class _Stub(nn.Module):
    """Stands in for decoder layer `index` inside the model's own forward pass."""

    def __init__(self, index: int, tape: _Tape) -> None:
        super().__init__()
        self.index, self.tape = index, tape

    def forward(self, *args, **kwargs):
        return self.tape.visit(self.index, args, kwargs)


class _Tape:
    """What the stubs do: record each layer's call (and stop after the last), or hand the
    precomputed final hidden state to the head."""

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.calls: list[tuple[tuple, dict]] = []
        self.embeddings: torch.Tensor | None = None
        self.final: torch.Tensor | None = None

    def visit(self, index: int, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.final is not None:  # replaying: only the last layer's output matters to the head
            return self.final if index == self.n_layers - 1 else hidden
        if index == 0:
            self.embeddings = hidden
        self.calls.append((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        if index == self.n_layers - 1:
            raise _Stop
        return hidden


def _key_renamer(model: nn.Module):
    """Checkpoint name -> module name, with transformers' own renamings (v5 loads GPT-NeoX's
    `embed_out` into `lm_head`, for example); names the model already has stay as they are."""
    known = set(model.state_dict())
    try:  # internal API; without it names are used as they are
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    except (ImportError, AttributeError, TypeError):
        return lambda name: name
    return lambda name: name if name in known else rename_source_key(name, renamings, [])[0]


class LayerwiseModel:
    """A causal LM whose decoder layers live on disk until they run."""

    def __init__(
        self, path: Path, structure: Structure, dtype: torch.dtype, device: torch.device, problems: list[str] = ()
    ) -> None:
        from transformers import AutoConfig

        self.structure, self.dtype, self.device = structure, dtype, device
        with captured_warnings() as self.warnings:
            try:
                config = AutoConfig.from_pretrained(path)
                with torch.device("meta"):
                    self.model = auto_class(structure).from_config(config, dtype=dtype).eval()
            except Exception as exc:  # transformers raises many kinds; all mean "does not load"
                raise load_failure(path, exc, problems) from None
        self.layers_path = layers_path(self.model, structure)
        layers = self.model.get_submodule(self.layers_path)
        self.layers = list(layers)  # the real layers stay on meta until they run
        if len(self.layers) != structure.num_layers:
            raise VerifyError(
                f"{path}: the model has {len(self.layers)} layers but the weights hold {structure.num_layers}"
            )
        self.tape = _Tape(len(self.layers))
        for i in range(len(layers)):
            layers[i] = _Stub(i, self.tape)
        self._load_globals()

    def _load_globals(self) -> None:
        """Embeddings, final norm and head straight from the checkpoint onto the meta modules
        (no second copy), after the modules that hold init-time buffers (rotary frequencies,
        Gemma's embedding scale) are made real and initialised as from_pretrained does."""
        self._init_where(lambda m: any(t.is_meta for t in m.buffers(recurse=False)))
        ckpt = self.structure.ckpt
        self.rename = rename = _key_renamer(self.model)
        state = {rename(n): self._cast(ckpt.load(n)) for n in self.structure.layout.others}
        result = self.model.load_state_dict(state, strict=False, assign=True)
        self.model.tie_weights()
        if result.unexpected_keys:
            self.warnings.append(f"unexpected keys: {', '.join(sorted(result.unexpected_keys))}")
        loaded = set(state) | self._tied_names()
        missing = [k for k in result.missing_keys if k not in loaded]
        if missing:  # from_pretrained would initialise them randomly and warn; so do we
            self.warnings.append(f"missing keys: {', '.join(sorted(missing))}")
            self._init_where(lambda m: any(t.is_meta for t in m.parameters(recurse=False)))

    def _init_where(self, pick) -> None:
        for module in [m for m in self.model.modules() if pick(m)]:
            module.to_empty(device=self.device, recurse=False)
            self.model._init_weights(module)

    def _tied_names(self) -> set[str]:
        seen: dict[int, str] = {}
        tied = set()
        for name, p in self.model.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                tied.add(name)
            seen.setdefault(id(p), name)
        return tied

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return (t.to(self.dtype) if t.is_floating_point() else t).to(self.device)

    def _materialize(self, i: int) -> nn.Module:
        layer = self.layers[i]
        ckpt = self.structure.ckpt
        prefix = f"{self.layers_path}.{i}."  # module names: checkpoint names pass through rename
        state = {
            self.rename(name).removeprefix(prefix): self._cast(ckpt.load(name))
            for name in self.structure.layout.layers[i].values()
        }
        try:
            layer.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise VerifyError(
                f"{ckpt.path}: layer {i} does not match the model built from config.json: {exc}"
            ) from None
        left = [n for n, t in [*layer.named_parameters(), *layer.named_buffers()] if t.is_meta]
        if left:
            raise VerifyError(
                f"layer-at-a-time mode cannot initialise {left} of layer {i}", hint="run without --layerwise"
            )
        return layer

    def _record(self, ids: list[int]) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
        """The embeddings and every layer's call arguments, from the model's own forward."""
        self.tape.calls, self.tape.embeddings, self.tape.final = [], None, None
        try:
            self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=False)
        except _Stop:
            pass
        return self.tape.embeddings, self.tape.calls

    def _head(self, ids: list[int], final: torch.Tensor) -> torch.Tensor:
        self.tape.final = final
        try:
            return (
                self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=False).logits[0].float().cpu()
            )
        finally:
            self.tape.final = None

    @torch.no_grad()
    def forward(
        self, prompts: list[list[int]], record: list[list[torch.Tensor]] | None = None, last_only: bool = False
    ) -> list[torch.Tensor]:
        """Logits [T, vocab] per prompt ([1, vocab] with last_only); with `record`, append each
        prompt's embeddings and layer outputs ([T, hidden], float32, CPU) to record[p]."""
        hidden, calls = map(list, zip(*(self._record(ids) for ids in prompts)))
        if record is not None:
            for p, h in enumerate(hidden):
                record[p].append(h[0].float().cpu())
        for i in range(len(self.layers)):
            layer = self._materialize(i)
            for p, call in enumerate(calls):
                args, kwargs = call[i]
                out = layer(hidden[p], *args, **kwargs)
                hidden[p] = out[0] if isinstance(out, tuple) else out
                if record is not None:
                    record[p].append(hidden[p][0].float().cpu())
            layer.to("meta")  # free this layer's weights before the next one loads
        return [self._head(ids, h[:, -1:] if last_only else h) for ids, h in zip(prompts, hidden)]


def run_layerwise(
    path: Path,
    structure: Structure,
    prompts: list[list[int]],
    n_new: int,
    dtype: torch.dtype,
    device: torch.device,
    problems: list[str] = (),
) -> ModelRun:
    """Like runner.run_full, one layer in memory at a time. Without a KV cache, each greedy
    step reruns every layer on the prompt plus the tokens so far (n_new passes over the weights)."""
    start = time.perf_counter()
    model = LayerwiseModel(path, structure, dtype, device, problems)
    load_s = time.perf_counter() - start
    hidden: list[list[torch.Tensor]] = [[] for _ in prompts]
    try:
        logits = model.forward(prompts, record=hidden)
    except VerifyError:
        raise
    except Exception as exc:  # modeling code raises many kinds; all mean "cannot run this config"
        raise run_failure(path, exc, problems) from None
    seqs, greedy, rows = [list(p) for p in prompts], [[] for _ in prompts], [[] for _ in prompts]
    last = [x[-1].clone() for x in logits]  # a view would keep the whole [T, vocab] tensor alive
    for step in range(n_new):
        for p, row in enumerate(last):
            greedy[p].append(int(row.argmax()))
            rows[p].append(row)
            seqs[p].append(greedy[p][-1])
        if step + 1 < n_new:
            last = [x[-1] for x in model.forward(seqs, last_only=True)]
    run = ModelRun(
        path,
        logits,
        hidden,
        greedy,
        [torch.stack(r) if r else torch.empty(0) for r in rows],
        load_s=load_s,
        load_warnings=model.warnings,
    )
    run.run_s = time.perf_counter() - start - load_s
    return run
