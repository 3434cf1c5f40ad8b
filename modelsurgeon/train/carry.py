"""Carry AdamW moments from a trained checkpoint through a later growth (`--carry-optimizer`).

The parent run left OUT/optimizer/: optimizer.safetensors ("<param>.exp_avg", "<param>.exp_avg_sq",
float32, checkpoint naming) and state.json ({"step", "naming", ...}). The grown model's
surgeon.json layer map says, for each output layer, which parent layer it copies and the branch
scale folded into it. Policies:

- reset: nothing carried; every parameter starts fresh.
- copy: each copied layer's parameters get their source layer's moments and the parent's step;
  globals (embeddings, final norm, head) keep theirs; zero-init layers (`new: zero`, branch
  scale 0) get zero moments with step 0. MSG likewise copies old moments and zero-fills new
  ones, but keeps the step for them (see below for why we do not).
- scale: like copy, but moments follow how each parameter's GRADIENT changes under the
  branch-scale fold, which is what Adam's moments average. A copy computing x + c*F(x) has c
  folded into the tensor that carries the branch output (o_proj/down_proj, or the post-norm
  gain: the arch table's `branches`). With upstream gradient g at the branch output:
    * the fold tensor's gradient is g a^T (a: its input), as before: its moments are kept;
    * every other tensor of the layer (q, k, v, gate, up, norms) sits upstream of the fold, so
      its gradient is multiplied by c: exp_avg *= c, exp_avg_sq *= c^2.
  Scaling both moments this way keeps the carried averages on the same scale as the gradients
  the copy will now receive, so m/sqrt(v) does not jump when new gradients mix in. This is the
  rule of Staged Training (Shen et al. 2022, allenai/staged-training growth_operator.py, which
  transforms exp_avg like the gradient and exp_avg_sq like its square, and tests it against the
  grown model's real gradients), and it matches the research notes' derivation for Net2Wider
  splits (replicas whose gradient is 1/n get m/n, v/n^2). Note that it is NOT "scale moments like
  the weight": the folded tensor's value changes by c but its gradient does not.
  tests/test_carry_optimizer.py measures the gradients of a `double` (split) model to check it.

Default: scale. Where nothing was scaled (plain copies, exact `new: zero` growth) it equals
copy, so after an exact growth the original layers take exactly the update the ungrown model
would have taken; where branches were scaled it keeps the moments consistent with the new
gradients. Use reset after growth that is far from function-preserving (stack, splice), where
the old moments describe a different function.

Zero layers get step 0, not the parent's step: with zero moments and a carried step t, Adam's
bias correction (1 - beta^t ~ 1) no longer compensates the zero start, and the first updates
would be several times the learning rate ((1-b1)/sqrt(1-b2) = 3.2x at the first step for the
default betas). Zero moments with step 0 are exactly a fresh state.

Width growth is not carried: surgeon.json does not record the width maps (which output unit
copies which input unit), so a width-grown model takes only `reset`. LoRA parents (naming
"peft") take only `reset` too: their adapters are merged, and a new adapter has no moments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.errors import CheckpointError, MissingManifestError, TrainError
from modelsurgeon.io.dtypes import same_bytes
from modelsurgeon.io.reader import Checkpoint, open_checkpoint, read_json_object
from modelsurgeon.manifest import MANIFEST, LayerRecord, Manifest, parse_layer_map, read_manifest

if TYPE_CHECKING:
    import torch

POLICIES = ("reset", "copy", "scale")
DEFAULT_POLICY = "scale"
MOMENTS_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class Origin:
    """Where one new parameter's moments come from: the parent's `source` tensor with exp_avg
    times `factor` (exp_avg_sq times factor^2), or zeros (fresh) when source is None."""

    source: str | None
    factor: float = 1.0
    byte_copy: bool = True  # grow copied the source tensor unchanged (its layer is unscaled)


def _read_state(opt_dir: Path) -> dict:
    path = opt_dir / STATE_FILE
    if not path.is_file() or not (opt_dir / MOMENTS_FILE).is_file():
        raise CheckpointError(
            f"{opt_dir}: expected {STATE_FILE} and {MOMENTS_FILE} (the optimizer state `surgeon train-stage` writes)",
            hint="pass the optimizer/ directory of the train-stage output that the model was grown from",
        )
    state = read_json_object(path, hint="the optimizer state is corrupt; use --carry-optimizer reset")
    if not isinstance(state.get("step"), int) or state.get("naming") not in ("checkpoint", "peft"):
        raise CheckpointError(
            f'{path}: expected {{"step": int, "naming": "checkpoint"|"peft", ...}}',
            hint="the optimizer state was not written by train-stage; use --carry-optimizer reset",
        )
    return state


def _grow_manifest(grown: Checkpoint, policy: str) -> Manifest:
    manifest = read_manifest(grown.path)
    if manifest is None or not manifest.layer_map:
        raise MissingManifestError(
            f"{grown.path}: no {MANIFEST} layer map, so parent moments cannot be mapped to its layers",
            hint="carry optimizer state only into a model written by `surgeon grow`; otherwise use reset",
        )
    if manifest.widened:
        raise TrainError(
            f"{grown.path} was widened, and {MANIFEST} does not record which new units copy which old ones, "
            f"so moments cannot follow them (policy {policy!r})",
            hint="use --carry-optimizer reset after width growth",
        )
    if manifest.multi_model:
        raise TrainError(
            f"{grown.path} takes layers from {1 + len(manifest.models)} models, and the optimizer state of "
            f"one parent holds moments for its own layers only (policy {policy!r})",
            hint="use --carry-optimizer reset after a multi-model splice",
        )
    return manifest


def _check_parent(opt_dir: Path, grown: Checkpoint, origins: dict[str, Origin], source_path: str | None) -> None:
    """When the optimizer directory sits in its checkpoint (train-stage's layout), that
    checkpoint must be the one the grow read. Headers alone cannot tell two checkpoints of one
    architecture apart, but a depth grow byte-copies every unscaled tensor: its 1-D tensors
    (norm gains, biases: a few KB) must equal their sources byte for byte."""
    parent_dir = opt_dir.resolve().parent
    if not (parent_dir / "config.json").is_file():
        return
    try:
        parent = open_checkpoint(parent_dir)
    except CheckpointError:
        return
    for name, origin in origins.items():
        if not origin.byte_copy or origin.source is None or len(grown.tensors[name].shape) != 1:
            continue
        if origin.source not in parent.tensors or not same_bytes(parent.load(origin.source), grown.load(name)):
            raise TrainError(
                f"the optimizer state in {opt_dir} belongs to {parent_dir}, but {grown.path} was grown from "
                f"{source_path} "
                f"(its '{name}' is not a copy of the parent's '{origin.source}')",
                hint="pass the optimizer/ directory of the checkpoint that `surgeon grow` read",
            )


def moment_origins(grown: Checkpoint, layer_map: list[LayerRecord] | list[dict], policy: str) -> dict[str, Origin]:
    """For every tensor of the grown checkpoint: the parent tensor (in the grow input's
    naming) whose moments it takes, and the factor (see the module docstring). `layer_map`
    is surgeon.json's, typed or as its JSON objects."""
    layer_map = parse_layer_map(layer_map)
    spec = resolve_spec(grown.config, grown.names)
    layout = layout_of(spec, grown.config, grown.names, str(grown.path))
    if len(layer_map) != layout.num_layers:
        raise CheckpointError(
            f"{grown.path}: {MANIFEST} maps {len(layer_map)} layers, the weights have {layout.num_layers}",
            hint=f"{MANIFEST} does not describe these weights",
        )
    origins = {name: Origin(name) for name in layout.others}
    for j, layer in enumerate(layout.layers):
        source, c = layer_map[j].source, layer_map[j].scale
        folds = spec.branch_tensors(set(layer))
        for suffix, name in layer.items():
            if c == 0.0:
                origins[name] = Origin(None, byte_copy=False)
            else:
                factor = c if policy == "scale" and suffix not in folds else 1.0
                origins[name] = Origin(spec.layer_tensor(source, suffix), factor, byte_copy=c == 1.0)
    return origins


def _fresh(shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    import torch

    zeros = torch.zeros(shape, dtype=torch.float32)
    return {"exp_avg": zeros, "exp_avg_sq": zeros.clone(), "step": torch.tensor(0.0)}


def _load_moments(
    opt_dir: Path, ckpt: Checkpoint, param_names: list[str], origins: dict[str, Origin], step: int
) -> dict[str, dict[str, torch.Tensor]]:
    import torch
    from safetensors import safe_open

    out: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(opt_dir / MOMENTS_FILE, framework="pt") as fh:
        have = set(fh.keys())
        for name in param_names:
            origin, shape = origins[name], ckpt.tensors[name].shape
            keys = (f"{origin.source}.exp_avg", f"{origin.source}.exp_avg_sq")
            if origin.source is None:
                out[name] = _fresh(shape)
            elif set(keys) <= have:  # else: the parent did not train it, so it starts fresh
                m, v = (fh.get_tensor(k).float() for k in keys)
                if tuple(m.shape) != shape or tuple(v.shape) != shape:
                    raise CheckpointError(
                        f"{opt_dir}: moments of '{origin.source}' are {list(m.shape)}, '{name}' in {ckpt.path} is "
                        f"{list(shape)}",
                        hint="the optimizer state belongs to another model; use --carry-optimizer reset",
                    )
                out[name] = {
                    "exp_avg": m * origin.factor,
                    "exp_avg_sq": v * origin.factor**2,
                    "step": torch.tensor(float(step)),
                }
    return out


def carry_state(
    parent_opt_dir: str | Path, grown: str | Path, param_names: list[str], policy: str = DEFAULT_POLICY
) -> dict[str, dict[str, torch.Tensor]]:
    """Moments for the grown model's trainable parameters (checkpoint naming): name ->
    {"exp_avg", "exp_avg_sq", "step"} (float32, step as a 0-d tensor as torch's AdamW keeps it).
    Names the parent has no moments for are omitted (they start fresh).

    Raises:
        TrainError: unknown policy; a LoRA (peft-named) parent or a widened model with a policy
            other than reset; names not in GROWN; state that belongs to another checkpoint.
        CheckpointError: missing or malformed optimizer state or surgeon.json; moments whose
            shapes do not fit.
    """
    if policy not in POLICIES:
        raise TrainError(f"unknown optimizer carry policy {policy!r}", hint=f"use one of: {', '.join(POLICIES)}")
    if policy == "reset":
        return {}
    opt_dir = Path(parent_opt_dir)
    state = _read_state(opt_dir)
    if state["naming"] == "peft":
        raise TrainError(
            f"{opt_dir} holds LoRA adapter moments; the adapter was merged, and a new adapter has nothing they "
            f"belong to",
            hint="use --carry-optimizer reset after a LoRA stage",
        )
    ckpt = open_checkpoint(grown)
    manifest = _grow_manifest(ckpt, policy)
    origins = moment_origins(ckpt, manifest.layer_map, policy)
    _check_parent(opt_dir, ckpt, origins, manifest.source.path)
    unknown = [n for n in param_names if n not in ckpt.tensors]
    if unknown:
        raise TrainError(
            f"{len(unknown)} parameter name(s) are not tensors of {ckpt.path}, e.g. {unknown[:3]}",
            hint="pass merged-checkpoint names (named_parameters() of the plain model, not of a peft model)",
        )
    out = _load_moments(opt_dir, ckpt, param_names, origins, state["step"])
    sourced = [n for n in param_names if origins[n].source is not None]
    if sourced and not any(n in out for n in sourced):
        raise CheckpointError(
            f"{opt_dir}: no moments for any of the {len(param_names)} parameters' source tensors",
            hint="the optimizer state belongs to another model or method; use --carry-optimizer reset",
        )
    return out


def install_state(
    optimizer: torch.optim.Optimizer,
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    carried: dict[str, dict[str, torch.Tensor]],
) -> int:
    """Put carried moments into an Adam/AdamW optimizer's state before its first step; return
    how many parameters got state. Moments take each parameter's device and dtype (as torch's
    own zeros_like init does); fused/capturable optimizers keep `step` on that device."""
    import torch

    by_id = {id(p): n for n, p in named_params}
    count = 0
    for group in optimizer.param_groups:
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            entry = carried.get(by_id.get(id(p), ""))
            if entry is None:
                continue
            if tuple(entry["exp_avg"].shape) != tuple(p.shape):
                raise TrainError(
                    f"carried moments for '{by_id[id(p)]}' are {list(entry['exp_avg'].shape)}, the parameter is "
                    f"{list(p.shape)}",
                    hint="carry_state was given names of another model",
                )
            state = {
                "step": entry["step"].to(torch.float32).to(p.device if on_device else "cpu"),
                "exp_avg": entry["exp_avg"].to(p.device, p.dtype),
                "exp_avg_sq": entry["exp_avg_sq"].to(p.device, p.dtype),
            }
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = state["exp_avg_sq"].clone()
            optimizer.state[p] = state
            count += 1
    return count
