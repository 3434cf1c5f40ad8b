"""What a stage trains, resolved against the checkpoint from headers and surgeon.json before any
weight is loaded: which layers (the method's choice: all, --layers, or the new ones) and, for
LoRA methods, which modules. The method object then applies the plan to the loaded model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.arch.spec import LINEAR_ROLES, ArchSpec, Layout
from modelsurgeon.errors import MissingManifestError, TrainError
from modelsurgeon.manifest import MANIFEST, read_manifest
from modelsurgeon.plan.selection import resolve_selection

if TYPE_CHECKING:
    from torch import nn

    from modelsurgeon.train.options import TrainOptions


@dataclass(frozen=True)
class MethodPlan:
    """The resolved method: which layers train (None: all) and, for LoRA, which module suffixes."""

    method: str
    layers: list[int] | None
    targets: list[str] | None  # module suffixes inside a layer, e.g. "self_attn.q_proj"
    fan_in_fan_out: bool = False  # GPT-2's Conv1D stores weights as (in, out)

    def describe(self) -> dict:
        return {"method": self.method, "layers": self.layers, "targets": self.targets}


def new_layers(model_dir: Path) -> list[int]:
    """The output layers the last growth added, from MODEL/surgeon.json's layer map."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise MissingManifestError(
            f"{model_dir}: no {MANIFEST}, so there is no record of which layers are new",
            hint="methods new and lora-new train the layers a `surgeon grow` added; grow the model first, or use "
            "--method lora/full",
        )
    layers = manifest.new_layers
    if not layers:
        raise TrainError(
            f"{model_dir / MANIFEST}: the layer map marks no layer as new (the last growth added none)",
            hint="grow with a plan that adds layers (e.g. plans/llama-pro.yaml), or use --method lora/full",
        )
    return layers


def _target_names(spec: ArchSpec, layer_suffixes: set[str]) -> dict[str, list[str]]:
    """Accepted --targets names -> module suffixes: each linear role, each module suffix and
    each suffix's last component (q_proj), for the modules this checkpoint's layers have."""
    present = sorted({s.rsplit(".", 1)[0] for s in layer_suffixes if s.endswith(".weight")})
    names: dict[str, list[str]] = {}
    for module in present:
        role = spec.modules.get(module)
        if role in LINEAR_ROLES:
            names.setdefault(role, []).append(module)
        if role in LINEAR_ROLES or not spec.known:
            names.setdefault(module, []).append(module)
            names.setdefault(module.rsplit(".", 1)[-1], []).append(module)
    return names


def resolve_targets(spec: ArchSpec, layout: Layout, targets: list[str] | None) -> list[str]:
    """Module suffixes for LoRA: every linear role of the family by default, or --targets."""
    names = _target_names(spec, set(layout.layers[0]))
    roles = [r for r in LINEAR_ROLES if r in names]
    if targets is None:
        if not roles:
            raise TrainError(
                f"model_type {spec.model_type!r} is not in the architecture table, so its linear roles are unknown",
                hint=f"name the modules with --targets (this model's layer modules: {', '.join(sorted(names))})",
            )
        targets = roles
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise TrainError(
            f"--targets {', '.join(unknown)}: not a linear role or module of this {spec.model_type} model",
            hint=f"valid roles: {', '.join(roles) or 'none known'}; modules: "
            f"{', '.join(sorted(n for n in names if n not in roles))}",
        )
    return sorted({m for t in targets for m in names[t]})


def plan_method(options: TrainOptions, model_dir: Path, spec: ArchSpec, layout: Layout) -> MethodPlan:
    """Resolve the method against the checkpoint (headers and surgeon.json only)."""
    method = options.train_method
    n = layout.num_layers
    layers = None
    if method.layers == "new":
        layers = new_layers(model_dir)
        if max(layers) >= n:
            raise TrainError(
                f"{model_dir / MANIFEST}: its layer map has layer {max(layers)} but the model has {n} layers",
                hint="surgeon.json belongs to another checkpoint; regrow the model",
            )
    elif method.layers == "chosen" and options.layers is not None:
        try:
            layers = resolve_selection(options.layers, n)
        except ValueError as exc:
            raise TrainError(f"--layers: {exc}", hint=f"the model has {n} layers") from None
    if not method.adapter:
        return MethodPlan(options.method, layers, None)
    targets = resolve_targets(spec, layout, options.targets)
    return MethodPlan(options.method, layers, targets, fan_in_fan_out=spec.transposed_linears)


def changed_tensors(plan: MethodPlan, spec: ArchSpec, layout: Layout) -> set[str]:
    """Checkpoint tensor names that training can change; every other tensor is copied byte for byte."""
    indices = plan.layers if plan.layers is not None else range(layout.num_layers)
    if plan.targets is None:
        if plan.layers is None:  # full: everything
            return {n for layer in layout.layers for n in layer.values()} | set(layout.others)
        return {n for i in indices for n in layout.layers[i].values()}
    wanted = {f"{t}.weight" for t in plan.targets}
    return {layout.layers[i][s] for i in indices for s in wanted if s in layout.layers[i]}


def trainable_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
