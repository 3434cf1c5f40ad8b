"""Progress of long commands, for people and for batch logs: on a terminal a bar with its total,
rate and ETA; otherwise (SLURM, nohup, CI) one plain line at a steady interval, e.g.

    grow: 1.20 GB of 4.94 GB (24%), 210.5 MB/s, elapsed 6s, ETA 18s
    train-stage: step 120 of 2000 (6%), 0.52 step/s, elapsed 3m50s, ETA 1h00m, loss 2.31, 1,234 tok/s

The interval is SURGEON_PROGRESS_INTERVAL seconds (default 30). No torch: grow, convert, verify,
train-stage, progressive and sweep workers all use it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

INTERVAL_ENV = "SURGEON_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def human_seconds(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def announce_total(progress: Callable | None, total: int) -> None:
    """Tell a Progress passed as a plain `progress(n)` callback how much is coming (for its ETA)."""
    if isinstance(progress, Progress):
        progress.set_total(total)


class Progress:
    """`with Progress("grow", unit="bytes", console=err) as p: p.advance(n)`; also callable as p(n).

    `unit` is "bytes" or a counted noun ("step", "tensor"); `fields` passed to update() (loss,
    tok/s) are shown after the counts. `heartbeat=True` also prints the line from a background
    thread while the caller is busy in one long call (verify), so a log never goes silent."""

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        completed: int = 0,
        unit: str = "bytes",
        console=None,
        interval: float | None = None,
        heartbeat: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self.label, self.total, self.completed, self.unit = label, total, completed, unit
        self.console, self.clock, self.heartbeat = console, clock, heartbeat
        self.interval = _interval() if interval is None else interval
        self.tty = bool(console.is_terminal)
        self.fields: dict[str, str] = {}
        self._bar = self._task = self._thread = None
        self._stop = threading.Event()

    def __enter__(self) -> Progress:
        self.start = self.last = self.clock()
        self.first = self.completed
        if self.tty:
            self._bar = self._make_bar()
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.completed, info="")
        elif self.heartbeat:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.stop()
        elif exc_type is None:
            self._print()  # the final line: a log shows how it ended

    def _make_bar(self):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bar

        count = (DownloadColumn(), TransferSpeedColumn()) if self.unit == "bytes" else (MofNCompleteColumn(),)
        return Bar(
            "[progress.description]{task.description}",
            BarColumn(),
            *count,
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            "{task.fields[info]}",
            console=self.console,
            transient=True,
        )

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def __call__(self, n: int) -> None:
        self.advance(n)

    def advance(self, n: int = 1, **fields) -> None:
        self.update(self.completed + n, **fields)

    def update(self, completed: int | None = None, **fields) -> None:
        if completed is not None:
            self.completed = completed
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, info="  ".join(self._field_texts()))
            return
        now = self.clock()
        if not self.tty and now - self.last >= self.interval:
            self.last = now
            self._print()

    def _beat(self) -> None:
        while not self._stop.wait(max(self.interval, 0.1)):
            self._print()

    def _counts(self) -> list[str]:
        if self.unit == "bytes":
            text = human_bytes(self.completed) + (f" of {human_bytes(self.total)}" if self.total else "")
        elif self.unit:
            text = f"{self.unit} {self.completed:,}" + (f" of {self.total:,}" if self.total else "")
        else:  # a heartbeat: nothing is counted
            return []
        return [text + (f" ({100 * self.completed / self.total:.0f}%)" if self.total else "")]

    def _field_texts(self) -> list[str]:
        return [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items()]

    def line(self) -> str:
        """The plain progress line: counts, percent, rate, elapsed, ETA, then the fields."""
        elapsed = self.clock() - self.start
        done = self.completed - self.first
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = self._counts()
        if done > 0:
            parts.append(f"{human_bytes(rate)}/s" if self.unit == "bytes" else f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {human_seconds(elapsed)}")
        if self.total and rate > 0 and self.completed < self.total:
            parts.append(f"ETA {human_seconds((self.total - self.completed) / rate)}")
        return f"{self.label}: " + ", ".join(parts + self._field_texts())

    def _print(self) -> None:
        self.console.print(self.line(), highlight=False, markup=False, soft_wrap=True)
