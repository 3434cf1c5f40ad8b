"""A finished stage's output directory: merged weights through the streaming writer (tensors
training could not change are byte copies of MODEL's), the peft adapter, AdamW moments and
scheduler state, metrics.jsonl, loss.png, and surgeon.json with the stage in its lineage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelsurgeon.errors import TrainError
from modelsurgeon.io.dtypes import ST_TO_TORCH
from modelsurgeon.io.reader import Checkpoint
from modelsurgeon.io.writer import OutTensor, write_shards
from modelsurgeon.manifest import SourceRecord, TrainStage, extend_lineage, finish_output, read_manifest, source_record
from modelsurgeon.ops.fold import fold_branch_scale
from modelsurgeon.train.callbacks import read_metrics

ADAPTER = "default"  # peft's name for the one adapter a stage trains


@dataclass
class MergedWeights:
    """Trained tensors by checkpoint name, computed one at a time: a LoRA-wrapped module's base
    weight plus peft's delta (B @ A * scale, transposed for Conv1D), or a trained parameter.
    The model is not modified, so shared base tensors (--share-duplicates) stay intact. `folds`
    (ramp_new) folds a branch scale into the tensors carrying the new layers' branch outputs."""

    model: torch.nn.Module  # the transformers model, with peft's LoRA layers injected when LoRA
    folds: dict[str, tuple[str, float]] = field(default_factory=dict)  # tensor -> (fold rule, scale)
    _cached: tuple[str, torch.Tensor] | None = None

    def full(self, name: str) -> torch.Tensor:
        if self._cached is None or self._cached[0] != name:
            tensor = self._compute(name)
            if name in self.folds:
                fold, scale = self.folds[name]
                tensor = fold_branch_scale(tensor.detach(), fold, name.endswith(".bias"), scale)
            self._cached = (name, tensor)
        return self._cached[1]

    @torch.no_grad()
    def _compute(self, name: str) -> torch.Tensor:
        from peft.tuners.lora import LoraLayer

        module_name, _, attr = name.rpartition(".")
        try:
            module = self.model.get_submodule(module_name)
        except AttributeError:
            raise TrainError(
                f"checkpoint tensor '{name}' has no module '{module_name}' in the loaded model",
                hint="the checkpoint's tensor names differ from transformers' module names; please report it",
            ) from None
        if isinstance(module, LoraLayer):
            base = getattr(module.get_base_layer(), attr)
            if attr == "weight" and ADAPTER in module.lora_A:
                return base.float() + module.get_delta_weight(ADAPTER).float()
            return base
        return getattr(module, attr)


def weight_tensors(ckpt: Checkpoint, changed: set[str], merged: MergedWeights) -> list[OutTensor]:
    """One OutTensor per input tensor, same names and dtypes; only `changed` ones are computed."""
    out = []
    for name, info in ckpt.tensors.items():
        if name not in changed:
            out.append(OutTensor(name, info.dtype, info.shape, info.nbytes, source=info))
            continue
        dtype = ST_TO_TORCH[info.dtype]

        def rows(start: int, stop: int, name=name, dtype=dtype) -> torch.Tensor:
            full = merged.full(name)
            return (full[start:stop] if full.ndim else full).detach().to("cpu", dtype)

        out.append(OutTensor(name, info.dtype, info.shape, info.nbytes, compute=rows))
    return out


def save_optimizer(directory: Path, moments: dict, optimizer, scheduler, *, step: int, method: str, naming: str) -> int:
    """OUT/optimizer: "<param>.exp_avg"/"<param>.exp_avg_sq" (float32) for every trainable param
    with AdamW state (`moments`: name -> (exp_avg, exp_avg_sq)), and state.json; returns the
    number of params written."""
    from safetensors.torch import save_file

    directory.mkdir()
    tensors, group = {}, optimizer.param_groups[0]
    for name, (avg, avg_sq) in moments.items():
        tensors[f"{name}.exp_avg"] = avg.detach().float().cpu().contiguous()
        tensors[f"{name}.exp_avg_sq"] = avg_sq.detach().float().cpu().contiguous()
    save_file(tensors, str(directory / "optimizer.safetensors"), metadata={"format": "pt"})
    meta = {
        "step": step,
        "method": method,
        "naming": naming,
        "lr_scheduler": scheduler.state_dict() if scheduler else None,
        "betas": list(group["betas"]),
        "eps": group["eps"],
        "weight_decay": group["weight_decay"],
        "lr": group.get("initial_lr", group["lr"]),
    }
    (directory / "state.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return len(tensors) // 2


def plot_losses(rows: list[dict], path: Path, title: str) -> None:
    """loss.png: train and eval loss against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["tokens"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", ms=4)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def stage_source(ckpt: Checkpoint, model_type: str, num_layers: int) -> SourceRecord:
    """The record of MODEL, the stage's input."""
    return source_record(
        ckpt.path,
        ckpt.files,
        model_type=model_type,
        num_layers=num_layers,
        tensors=len(ckpt.tensors),
        bytes=ckpt.total_bytes,
    )


def model_card(src: Path, stage: dict) -> str:
    card = src / "README.md"
    old = card.read_text().rstrip() + "\n" if card.is_file() else f"# {src.name}, trained\n"
    loss = stage["final_eval_loss"]
    return (
        old
        + f"""
## Training stage with modelsurgeon

`surgeon train-stage --method {stage["method"]}`: {stage["steps"]} steps, {stage["tokens"]:,} tokens on
{", ".join(stage["data"])}; {stage["trainable_params"]:,} trainable parameters; final eval loss
{loss if loss is None else f"{loss:.4f}"}. Metrics in `metrics.jsonl` and `loss.png`; provenance in `surgeon.json`.
"""
    )


def finish_files(tmp: Path, ckpt: Checkpoint, work: Path, stage: dict, source: SourceRecord, title: str) -> list[str]:
    """Everything but the weights, adapter and optimizer: config, tokenizer and other files
    copied from MODEL, metrics.jsonl, loss.png, surgeon.json and the model card."""
    manifest = extend_lineage(read_manifest(ckpt.path), TrainStage.model_validate(stage), source)
    # sub-directories (an old adapter/, optimizer/) are stale here
    skipped = finish_output(tmp, ckpt.path, manifest, ckpt.config, model_card(ckpt.path, stage))
    rows = read_metrics(work / "metrics.jsonl")
    (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_losses(rows, tmp / "loss.png", title)
    return skipped


def write_weights(
    tmp: Path,
    ckpt: Checkpoint,
    changed: set[str],
    model: torch.nn.Module,
    max_shard_size: int,
    folds: dict[str, tuple[str, float]] | None = None,
) -> None:
    folds = folds or {}
    write_shards(tmp, weight_tensors(ckpt, changed | set(folds), MergedWeights(model, folds)), max_shard_size)
