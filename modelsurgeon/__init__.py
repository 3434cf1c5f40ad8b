"""modelsurgeon: grow trained language models (deeper, wider) from their checkpoints."""

from modelsurgeon.manifest import tool_version

__version__ = tool_version()

# Bound after the import: importing the grow package sets `modelsurgeon.grow` to the package,
# and the public API's `modelsurgeon.grow` is the function. Neither imports torch.
from modelsurgeon.grow import grow, prepare  # noqa: E402


def __getattr__(name: str):
    if name in ("load_plan", "parse_plan"):
        from modelsurgeon import plan

        return getattr(plan, name)
    raise AttributeError(name)


__all__ = ["__version__", "grow", "prepare", "load_plan", "parse_plan"]
