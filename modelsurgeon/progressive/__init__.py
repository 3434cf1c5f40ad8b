"""`surgeon progressive`: grow-train recipes (train small, grow, train, ...) with growth triggers,
FLOP accounting, FLOP-matched from-scratch baselines and a report."""


def __getattr__(name: str):
    # torch and transformers load only when a recipe runs, so `surgeon --help` stays fast.
    if name == "run_recipe":
        from modelsurgeon.progressive.runner import run_recipe

        return run_recipe
    if name in ("load_recipe", "parse_recipe"):
        from modelsurgeon.progressive import recipe

        return getattr(recipe, name)
    if name == "plan_recipe":
        from modelsurgeon.progressive.planning import plan_recipe

        return plan_recipe
    raise AttributeError(name)


__all__ = ["run_recipe", "load_recipe", "parse_recipe", "plan_recipe"]
