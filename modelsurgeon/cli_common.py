"""What every `surgeon` command shares: the consoles, error and signal handling, hub-id
resolution and byte sizes (cli.py and cli_train.py both register commands with them)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from modelsurgeon.errors import SurgeonError
from modelsurgeon.io.atomic import Interrupted, exit_on_signals
from modelsurgeon.io.hub import resolve_model

out = Console()
err = Console(stderr=True, soft_wrap=True)  # never wrap paths in error messages

SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_byte_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not m or m.group(2) not in SIZE_UNITS:
        raise typer.BadParameter(f"{text!r} is not a size; use e.g. 5GB, 500MB, 2GiB or a byte count")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2)])


def resolve(model: Path) -> Path:
    """MODEL as a local directory, or a hub id (org/name[@revision]) from the hub cache or a download."""

    return resolve_model(model, notify=lambda m: err.print(m, highlight=False, markup=False))


def handled(fn):
    """Turn SurgeonErrors into a message on stderr and the error's exit code, and SIGTERM,
    SIGHUP and SIGINT into 128 + the signal number once the temporary output is removed."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with exit_on_signals():
                return fn(*args, **kwargs)
        except SurgeonError as exc:
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.hint:  # escaped: a hint like `pip install modelsurgeon[gguf]` must print as written
                err.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except Interrupted as exc:
            err.print(f"[bold red]stopped:[/] {exc}; no partial output was left behind", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper
