"""Progress for batch logs and terminals: plain lines at a steady interval when stderr is not a
terminal (with counts, rate, ETA and fields), a bar with its total on a terminal; grow, convert and
train-stage use it; train-stage reports a bad --data before the training stack loads."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import DataError
from modelsurgeon.progress import INTERVAL_ENV, Progress
from modelsurgeon.train import make_options, train_stage

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def plain_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=200)


def test_plain_lines_at_a_steady_interval():
    console, clock = plain_console(), Clock()
    with Progress("train-stage", total=10, unit="step", console=console, interval=30, clock=clock) as p:
        for step in range(1, 11):
            clock.t = 10.0 * step  # one step every 10 s: a line at 30, 60, 90 s, and the final one
            p.update(step, loss=2.5 - step / 10)
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == "train-stage: step 3 of 10 (30%), 0.1 step/s, elapsed 30s, ETA 1m10s, loss 2.2"
    assert lines[1].startswith("train-stage: step 6 of 10 (60%)") and "ETA 40s" in lines[1]
    assert lines[-1].startswith("train-stage: step 10 of 10 (100%)") and "ETA" not in lines[-1]


def test_byte_lines_and_a_total_announced_later():
    console, clock = plain_console(), Clock()
    with Progress("grow", console=console, interval=0, clock=clock) as p:
        p.set_total(4_000_000)
        clock.t = 2.0
        p(1_000_000)
    assert console.file.getvalue().splitlines()[0] == "grow: 1.00 MB of 4.00 MB (25%), 500.00 KB/s, elapsed 2s, ETA 6s"


def test_terminal_gets_a_bar_with_its_total_and_no_plain_lines():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with Progress("convert", total=1000, console=console, interval=0) as p:
        p(400)
        assert p._bar.tasks[0].total == 1000 and p._bar.tasks[0].completed == 400
    assert "convert: " not in console.file.getvalue()


def test_heartbeat_prints_while_the_caller_is_busy():
    console = plain_console()
    with Progress("verify", unit="", console=console, interval=0.1, heartbeat=True):
        time.sleep(0.35)
    lines = console.file.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("verify: elapsed ") for line in lines)


def test_grow_and_convert_log_their_bytes(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    grown = CliRunner().invoke(app, ["grow", str(tiny("llama")), "--plan", "llama-pro", "-o", str(tmp_path / "g")])
    assert grown.exit_code == 0, grown.output
    assert any(line.startswith("grow: ") and " of " in line and "(100%)" in line for line in grown.output.splitlines())
    conv = CliRunner().invoke(app, ["convert", str(tmp_path / "g"), "-o", str(tmp_path / "c"), "--dtype", "bf16"])
    assert any(line.startswith("convert: ") and "(100%)" in line for line in conv.output.splitlines()), conv.output


def test_train_stage_logs_steps_and_loss(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    result = CliRunner().invoke(
        app,
        [
            "train-stage",
            str(tiny("llama")),
            "--data",
            "synthetic:arith:n=100",
            "-o",
            str(tmp_path / "t"),
            "--steps",
            "2",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--log-every",
            "1",
            "--save-every",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("train-stage: step ")]
    assert lines[-1].startswith("train-stage: step 2 of 2 (100%)") and "loss " in lines[-1] and "tok/s" in lines[-1]


def test_bad_data_is_reported_before_the_training_stack_loads(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelsurgeon.train.backend", None)  # importing it now fails
    with pytest.raises(DataError, match="no such file"):
        train_stage(tiny("llama"), tmp_path / "o", make_options(data=[str(tmp_path / "missing.jsonl")], steps=2))


def test_bad_data_fails_within_three_seconds(tiny, tmp_path):
    """As a user runs it, in a fresh process. The bound is on the process's CPU time (importing
    torch and transformers alone takes 5+ s of it), which other jobs sharing the cores cannot
    inflate the way they inflate wall time; quiet, the command exits in about 0.3 s of wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelsurgeon",
            "train-stage",
            str(tiny("llama")),
            "--data",
            str(tmp_path / "missing.jsonl"),
            "-o",
            str(tmp_path / "o"),
            "--steps",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall, cpu = time.perf_counter() - start, usage.ru_utime + usage.ru_stime
    stderr = proc.stderr.read()
    assert os.waitstatus_to_exitcode(status) == DataError.exit_code and "missing.jsonl" in stderr, stderr
    assert cpu < 3.0, f"{cpu:.1f} s of CPU ({wall:.1f} s wall)"
