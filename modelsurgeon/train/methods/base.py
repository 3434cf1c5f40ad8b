"""What every training method declares: its name, default learning rate, which layers train,
whether a LoRA adapter carries the update, and how the trained model becomes OUT's weights.

A method is a frozen object in the registry (registry.py), one module per method, in the manner
of mergekit's merge methods and litgpt's finetune/lora.py, full.py: options validation, method
planning, model loading and output writing ask the object instead of testing its name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from torch import nn

    from modelsurgeon.arch.spec import ArchSpec
    from modelsurgeon.train.methods.plan import MethodPlan
    from modelsurgeon.train.options import TrainOptions

# Which layers a method trains: every layer; the --layers selection (default every layer); or the
# layers the last growth added (from surgeon.json's layer map).
LayerChoice = Literal["all", "chosen", "new"]


@dataclass(frozen=True)
class TrainMethod(ABC):
    """One way to train a stage. Subclasses say how the update is attached and saved."""

    name: str
    summary: str  # one line for --help
    default_lr: float
    layers: LayerChoice
    adapter: ClassVar[bool] = False  # LoRA adapters on a frozen base (OUT/adapter is also written)
    optimizer_naming: ClassVar[str] = "checkpoint"  # parameter names in OUT/optimizer (carry.py reads them)

    def base_dtype(self, bf16: bool) -> str:
        """The dtype the base model loads in (torch attribute name)."""
        return "float32"

    @abstractmethod
    def attach(self, model: nn.Module, plan: MethodPlan, options: TrainOptions, spec: ArchSpec) -> nn.Module:
        """Make exactly the planned parameters trainable; return the module the Trainer trains."""

    def trained_model(self, net: nn.Module) -> nn.Module:
        """The model whose weights become OUT's tensors (after training `net`)."""
        return net

    def save_extras(self, net: nn.Module, directory: Path) -> None:
        """Anything besides the weights that OUT keeps for this method (nothing by default)."""
        return None
