"""Gradual DropIn (Smith et al. 2016, arXiv 1511.06951) for the stage after a growth: `ramp_new`.

Every residual branch of the layers the last growth added (MODEL/surgeon.json's layer map) is
scaled by s(t) = min(1, t / N), t being the optimizer steps done. At t = 0 the new layers are
identities, so the grown model computes exactly its parent's function (for a growth that only
added layers); they fade in over N steps. The scale is a forward hook on the module whose
output is the branch's contribution to the residual stream (the architecture table's
`branches`: o_proj and down_proj in Llama, the post-norms in OLMo 2 and Gemma 2), so it scales a
LoRA-wrapped module's whole output (base and adapter) too.

When the stage writes OUT, the current s is folded into the tensors that carry those outputs
(`ops.fold.fold_branch_scale`, the fold `grow` uses for branch scales), so the checkpoint is a
standard one that computes what the ramped model computed at that s, also when training stopped
before N steps (s < 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelsurgeon.arch.spec import ArchSpec, Layout
from modelsurgeon.errors import TrainError
from modelsurgeon.train.methods import new_layers


@dataclass(frozen=True)
class RampPlan:
    """What to ramp, resolved from headers and surgeon.json before any weight is loaded."""

    steps: int  # N: s reaches 1 after N optimizer steps
    modules: list[str]  # module names (in the transformers model) whose output is scaled
    folds: dict[str, str]  # checkpoint tensor -> fold rule, for writing OUT


def plan_ramp(steps: int | None, model_dir: Path, spec: ArchSpec, layout: Layout) -> RampPlan | None:
    """The branch modules and tensors of the new layers, or None without `ramp_new`.

    Raises:
        TrainError: MODEL has no record of new layers, or its family's residual branches are unknown.
    """
    if steps is None:
        return None
    if not spec.branches:
        raise TrainError(
            f"ramp_new: the residual branches of model_type {spec.model_type!r} are not in the "
            "architecture table, so the new layers' branch outputs cannot be scaled",
            hint="drop ramp_new (--ramp-new-steps), or add the family's branches to arch/specs",
        )
    layers = new_layers(model_dir)
    modules, folds = [], {}
    for i in layers:
        found = spec.branch_tensors(set(layout.layers[i]))
        modules += sorted({f"{spec.layer_prefix}{i}.{suffix.rsplit('.', 1)[0]}" for suffix in found})
        folds.update({layout.layers[i][suffix]: fold for suffix, (_, fold) in found.items()})
    if not modules:
        raise TrainError(
            f"ramp_new: the new layers {layers} of {model_dir} have none of the branch tensors "
            f"of {spec.model_type} ({', '.join(b.module for b in spec.branches.values())})",
            hint="drop ramp_new (--ramp-new-steps)",
        )
    return RampPlan(steps, modules, folds)


@dataclass
class BranchRamp:
    """The live scale s and the forward hooks that apply it."""

    plan: RampPlan
    scale: float = 0.0
    _handles: list = field(default_factory=list)

    def set_step(self, step: int) -> None:
        self.scale = min(1.0, step / self.plan.steps)

    def attach(self, model) -> None:
        """Hook every planned module of `model` (a transformers model, or peft's wrapper of one)."""
        wanted = set(self.plan.modules)
        found = {}
        for name, module in model.named_modules():
            key = next((w for w in wanted if name == w or name.endswith("." + w)), None)
            if key is not None and key not in found:  # the outermost match: peft's LoRA layer, not its base
                found[key] = module
        missing = sorted(wanted - set(found))
        if missing:
            raise TrainError(
                f"ramp_new: the loaded model has no module {missing[0]}",
                hint="the checkpoint's tensor names differ from transformers' module names; please report it",
            )
        self._handles = [m.register_forward_hook(self._scale_output) for m in found.values()]

    def _scale_output(self, module, args, output):
        return output * self.scale

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def folds(self) -> dict[str, tuple[str, float]]:
        """Checkpoint tensor -> (fold rule, current s), for writing OUT."""
        return {name: (fold, self.scale) for name, fold in self.plan.folds.items()}

    def callback(self):
        """A TrainerCallback keeping s at s(global_step): from the start (or the resumed step), and
        after every optimizer step, so evaluations and the written OUT see the s of the steps done."""
        from transformers import TrainerCallback

        ramp = self

        class RampCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                ramp.set_step(state.global_step)

            def on_step_end(self, args, state, control, **kwargs):
                ramp.set_step(state.global_step)

        return RampCallback()
