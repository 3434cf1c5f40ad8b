"""Trainer callbacks: metrics.jsonl rows, Ctrl-C/SIGTERM/SIGHUP into a resumable checkpoint, a rich progress bar."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback

from modelsurgeon.io.atomic import STOP_SIGNALS
from modelsurgeon.progress import Progress

# Trainer log keys -> metrics.jsonl keys.
TRAIN_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm"}


class MetricsCallback(TrainerCallback):
    """Append one JSON row per logging step (and per evaluation) to `path`.

    On resume the Trainer restarts from its last checkpoint, so rows logged after that step
    (by the interrupted run) are dropped first: the file then matches an uninterrupted run."""

    def __init__(self, path: Path, tokens_per_step: int) -> None:
        self.path = path
        self.tokens_per_step = tokens_per_step
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= state.global_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "tokens": state.global_step * self.tokens_per_step}
        if "eval_loss" in logs:
            row["eval_loss"] = logs["eval_loss"]
        elif "loss" in logs:
            row.update({ours: logs[k] for k, ours in TRAIN_KEYS.items() if k in logs})
        else:  # the end-of-training summary (runtime, samples/s): not a curve point
            return
        row["elapsed_s"] = round(time.perf_counter() - self.start, 3)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class InterruptCallback(TrainerCallback):
    """Turn Ctrl-C, SIGTERM (preemption) and SIGHUP into "save a checkpoint and stop" at the end
    of the current optimizer step.

    The Trainer checks `control` after each step, so setting should_save and
    should_training_stop there makes it write a normal, resumable checkpoint. A second signal
    falls through to the previous handlers (restored by then): the CLI's, which stop at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_at: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:

        previous: dict = {}

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)

        def handler(signum, frame):
            self.signum = signum
            restore()

        try:
            for s in STOP_SIGNALS:
                previous[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread: signals cannot reach us anyway
            yield
            return
        try:
            yield
        finally:
            restore()

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class RichProgressCallback(TrainerCallback):
    """Training progress on stderr: a bar with total and ETA on a terminal, a plain line at a steady
    interval in logs (step, loss, learning rate, tokens/s, ETA)."""

    def __init__(self, console, tokens_per_step: int, label: str = "train-stage") -> None:
        self.console = console
        self.tokens_per_step = tokens_per_step
        self.label = label
        self.progress = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return

        self.progress = Progress(
            self.label, total=state.max_steps, completed=state.global_step, unit="step", console=self.console
        )
        self.progress.__enter__()
        self._t0, self._step0 = time.perf_counter(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        rate = (state.global_step - self._step0) * self.tokens_per_step / max(time.perf_counter() - self._t0, 1e-9)
        fields = {
            k.replace("learning_rate", "lr"): float(logs[k])
            for k in ("loss", "eval_loss", "learning_rate")
            if k in logs
        }
        self.progress.update(**fields, **{"tok/s": f"{rate:,.0f}"})

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None
