"""Architecture knowledge: one data table per model family, plus detection of unknown ones."""

from modelsurgeon.arch.registry import SUPPORTED_FAMILIES, resolve_spec
from modelsurgeon.arch.spec import ArchSpec, Branch, Layout

__all__ = ["ArchSpec", "Branch", "Layout", "SUPPORTED_FAMILIES", "resolve_spec"]
