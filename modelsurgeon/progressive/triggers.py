"""When a train stage ends (and the next growth happens): fixed steps or tokens, a loss plateau,
or the Du et al. token rule; a stage lists any of them and stops at whichever fires first, with
its `steps`/`tokens` budget as the cap that always applies.

The decision logic is pure (a loss history and counters in, a reason out) so it is tested on
synthetic curves; `TriggerCallback` only feeds it from the Trainer and sets
`control.should_training_stop`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Plateau(_Strict):
    """Stop when the mean loss of the last `window` logged losses improves on the mean of the
    `window` before it by less than `min_rel_improvement` (relative), `patience` times in a row."""

    window: int = Field(5, ge=1)
    min_rel_improvement: float = Field(0.01, ge=0, lt=1)
    patience: int = Field(2, ge=1)


class DuRule(_Strict):
    """Du et al. 2024 ("Stacking Your Transformers"), growth timing d in tokens:
    log10(d) = 0.88 * log10(N) + 163.27 / log10(C) - 5.74, with N the target (grown) model's
    parameters and C the compute budget in FLOPs. Fitted on 1B-7B targets; at toy scale it asks
    for far more tokens than a stage has, so the stage's cap decides. Both default to the
    recipe's final architecture and its planned total FLOPs."""

    target_params: int | None = Field(None, ge=1)
    compute: float | None = Field(None, gt=1)


class Trigger(_Strict):
    """One stop condition; exactly one field set."""

    steps: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1)
    plateau: Plateau | None = None
    du_token_rule: DuRule | None = None

    @model_validator(mode="after")
    def _one(self) -> Trigger:
        chosen = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"a trigger sets exactly one of steps, tokens, plateau, du_token_rule (got {chosen or 'none'})"
            )
        return self


def du_tokens(target_params: float, compute: float) -> float:
    """Tokens to train the small model before growing (Du et al. 2024, eq. for d)."""
    return 10 ** (0.88 * math.log10(target_params) + 163.27 / math.log10(compute) - 5.74)


@dataclass
class PlateauState:
    rule: Plateau
    losses: list[float] = field(default_factory=list)
    strikes: int = 0

    def update(self, loss: float) -> bool:
        """Add one logged loss; True once the plateau has held for `patience` checks."""
        self.losses.append(loss)
        w = self.rule.window
        if len(self.losses) < 2 * w:
            return False
        before = sum(self.losses[-2 * w : -w]) / w
        now = sum(self.losses[-w:]) / w
        improvement = (before - now) / abs(before) if before else 0.0
        self.strikes = self.strikes + 1 if improvement < self.rule.min_rel_improvement else 0
        return self.strikes >= self.rule.patience


@dataclass
class StopDecider:
    """First-of over `triggers`, with the stage budget as cap (`cap_steps`)."""

    triggers: list[Trigger]
    cap_steps: int
    tokens_per_step: int
    du_defaults: tuple[float, float] = (0.0, 0.0)  # (target params, compute) for du_token_rule
    plateaus: list[PlateauState] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.plateaus = [PlateauState(t.plateau) for t in self.triggers if t.plateau is not None]

    def du_threshold(self, rule: DuRule) -> float:
        n = rule.target_params or self.du_defaults[0]
        c = rule.compute or self.du_defaults[1]
        return du_tokens(n, c)

    def on_loss(self, loss: float) -> str | None:
        """Feed one logged training loss; the reason to stop, or None."""
        fired = [p.update(loss) for p in self.plateaus]  # update every plateau, even after one fires
        return "plateau" if any(fired) else None

    def on_step(self, step: int) -> str | None:
        """After optimizer step `step`: the reason to stop, or None."""
        tokens = step * self.tokens_per_step
        for t in self.triggers:
            if t.steps is not None and step >= t.steps:
                return "steps"
            if t.tokens is not None and tokens >= t.tokens:
                return "tokens"
            if t.du_token_rule is not None and tokens >= self.du_threshold(t.du_token_rule):
                return "du_token_rule"
        return "cap" if step >= self.cap_steps else None


def decide(decider: StopDecider, losses: list[float], log_every: int) -> tuple[int, str]:
    """Replay a loss curve (one loss per `log_every` steps) through `decider`: (stop step, reason).
    What the callback does during training, for tests and for explaining a run."""
    for i, loss in enumerate(losses):
        step = (i + 1) * log_every
        reason = decider.on_loss(loss) or decider.on_step(step)
        if reason:
            return step, reason
    return len(losses) * log_every, "cap"


def make_callback(decider: StopDecider, record: dict):
    """A TrainerCallback that stops training when `decider` says so; the reason and step go in `record`."""
    from transformers import TrainerCallback

    class TriggerCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "eval_loss" not in logs:
                self._stop(control, state.global_step, decider.on_loss(float(logs["loss"])))

        def on_step_end(self, args, state, control, **kwargs):
            self._stop(control, state.global_step, decider.on_step(state.global_step))

        def _stop(self, control, step: int, reason: str | None) -> None:
            if reason is None or "reason" in record:
                return
            record.update(reason=reason, step=step)
            if reason != "cap":  # the cap is max_steps: the Trainer ends there with its own final eval
                control.should_training_stop = True
                control.should_evaluate = True  # the stage's final eval loss, at the step it stopped
                control.should_log = True

    return TriggerCallback()
