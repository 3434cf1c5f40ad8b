"""One error hierarchy. Each error names the input, what was expected, and carries a fix hint.

Only `cli.py` turns these into exit codes; library code raises, never exits. Exit code 2 is the
command line's own usage error (click's), so no error class uses it; README.md has the table.
"""

from __future__ import annotations


class SurgeonError(Exception):
    """Base error: `message` says what is wrong, `hint` says how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class PlanError(SurgeonError):
    """A growth plan is invalid; `problems` lists every problem found, each with its location."""

    exit_code = 11

    def __init__(self, source: str, problems: list[str], hint: str = "") -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''} in the plan:\n{lines}", hint)


class CheckpointError(SurgeonError):
    """A checkpoint directory or file is missing, corrupt, or inconsistent."""

    exit_code = 3


class MissingManifestError(CheckpointError):
    """A checkpoint has no surgeon.json where the command needs its record (layer map, class)."""

    exit_code = 12


class ShapeError(SurgeonError):
    """Tensors do not have the shapes or dtypes the plan or architecture requires."""

    exit_code = 4


class OutputError(SurgeonError):
    """The output location cannot be used (exists, inside the input, no space)."""

    exit_code = 5


class VerifyError(SurgeonError):
    """A grown checkpoint failed the checks its equivalence class promises."""

    exit_code = 6


class ConvertError(SurgeonError):
    """A conversion cannot be done as asked (format, dtype, family or tokenizer not supported)."""

    exit_code = 7


class TrainError(SurgeonError):
    """A training stage cannot run as asked (method, targets, layers, budget, resume state)."""

    exit_code = 9


class TrainInterrupted(TrainError):
    """Training stopped on a signal (Ctrl-C, SIGTERM on preemption, SIGHUP) after saving a
    resumable checkpoint; exits with the shell convention 128 + the signal number."""

    exit_code = 130  # 128 + SIGINT; each instance carries its own signal's code

    def __init__(self, message: str, hint: str = "", signum: int = 2) -> None:
        super().__init__(message, hint)
        self.signum = signum
        self.exit_code = 128 + signum


class DataError(SurgeonError):
    """Training or evaluation data cannot be read, parsed or packed as asked."""

    exit_code = 8


class RecipeError(PlanError):
    """A `surgeon progressive` recipe is invalid; every problem is listed before anything trains."""

    exit_code = 10

    def __init__(self, source: str, problems: list[str], hint: str = "") -> None:
        super().__init__(source, problems, hint)
        self.message = self.message.replace("in the plan:", "in the recipe:", 1)
        self.args = (self.message,)


class SweepError(PlanError):
    """A `surgeon sweep` file, one of its expanded recipes, or a sweep directory is unusable."""

    exit_code = 13

    def __init__(self, source: str, problems: list[str], hint: str = "") -> None:
        super().__init__(source, problems, hint)
        self.message = self.message.replace("in the plan:", "in the sweep:", 1)
        self.args = (self.message,)
