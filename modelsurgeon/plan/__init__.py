"""Growth plans: the YAML contract (schema), loading with located errors, mergekit translation."""

from modelsurgeon.plan.load import LoadedPlan, load_plan, parse_plan
from modelsurgeon.plan.schema import Plan

__all__ = ["LoadedPlan", "Plan", "load_plan", "parse_plan"]
