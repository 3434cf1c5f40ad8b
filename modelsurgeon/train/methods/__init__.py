"""Training methods as registered objects (one module each: lora, full, new, lora_new) and the
planning that resolves a method against a checkpoint (plan.py)."""

from modelsurgeon.train.methods.base import TrainMethod
from modelsurgeon.train.methods.registry import METHODS, get_method, method_names

# plan.py reads the architecture table; it loads on first use so that `surgeon --help`, which
# needs only the registry, stays fast.
_PLAN_NAMES = (
    "LINEAR_ROLES",
    "MethodPlan",
    "changed_tensors",
    "new_layers",
    "plan_method",
    "resolve_targets",
    "trainable_params",
)


def __getattr__(name: str):
    if name in _PLAN_NAMES:
        from modelsurgeon.train.methods import plan

        return getattr(plan, name)
    raise AttributeError(name)


__all__ = ["METHODS", "TrainMethod", "get_method", "method_names", *_PLAN_NAMES]
