"""`surgeon sweep`: a recipe over axes x seeds, tuned baselines, statistics over seeds, and the
commands to run it anywhere (`--emit-commands`, `sweep report`)."""

from importlib import import_module

_API = {
    "run_sweep": ("execute", "run_sweep"),
    "emit": ("execute", "emit_commands"),
    "report_dir": ("report", "write_sweep_report"),
}


def __getattr__(name: str):
    # torch, transformers and numpy load only when a sweep runs, so `surgeon --help` stays fast.
    if name in _API:
        module, attr = _API[name]
        return getattr(import_module(f"modelsurgeon.sweep.{module}"), attr)
    raise AttributeError(name)


__all__ = list(_API)
