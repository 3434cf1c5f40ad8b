"""modelsurgeon: grow trained language models (deeper, wider) from their checkpoints."""

from modelsurgeon.manifest import tool_version

__version__ = tool_version()


def __getattr__(name: str):
    # Heavy modules (torch) load only when the API is used, so `surgeon --help` starts fast.
    if name in ("grow", "prepare"):
        from modelsurgeon import engine

        return getattr(engine, name)
    if name in ("load_plan", "parse_plan"):
        from modelsurgeon import plan

        return getattr(plan, name)
    raise AttributeError(name)


__all__ = ["__version__", "grow", "prepare", "load_plan", "parse_plan"]
