"""Typer options generated from a pydantic model's fields, so that a command's flags, their
defaults and their help have one source (the model). Every generated option defaults to None
("not given"), so the command can tell which flags override a --config file; the model's own
default is what --help shows."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Literal, Union

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

SCALARS = (bool, int, float, str, Path)


def flag(*decls: str, help: str):
    """A boolean option shown as a flag (`--resume`), without the `<bool>` value Typer prints."""
    return typer.Option(*decls, help=help, metavar="")


def _unwrap_optional(annotation):
    """X for `X | None` / Optional[X]; the annotation itself otherwise."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def cli_type(annotation) -> type:
    """The type Typer parses for a field: scalars and lists of scalars as they are, a Literal as
    its values' type (the model checks the choice, so every bad value gets the same error), and
    anything richer as text the model parses (e.g. a layer selection written as in plans)."""
    inner = _unwrap_optional(annotation)
    if typing.get_origin(inner) is Literal:
        return type(typing.get_args(inner)[0])
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        return list[item if item in SCALARS else str]
    return inner if inner in SCALARS else str


def _help(field: FieldInfo, annotation) -> tuple[str, str | bool]:
    """The option's help (plus its choices, for a Literal) and the default --help shows."""
    text = field.description or ""
    inner = _unwrap_optional(annotation)
    if typing.get_origin(inner) is Literal:
        text += f" One of: {', '.join(str(a) for a in typing.get_args(inner))}."
    if field.is_required():
        return f"{text} Required, here or in --config.", False
    default = field.get_default()
    return text, False if default is None or isinstance(default, bool) else str(default)


def option_parameter(name: str, field: FieldInfo, panel: str) -> inspect.Parameter:
    """One keyword parameter of a Typer command for a model field (`lora_r` -> --lora-r)."""
    dashed = name.replace("_", "-")
    kind = cli_type(field.annotation)
    text, shown = _help(field, field.annotation)
    # a bool field is a flag pair (--bf16/--no-bf16): the negative form overrides a --config file
    if kind is bool:
        option = typer.Option(f"--{dashed}/--no-{dashed}", help=text, metavar="", rich_help_panel=panel)
    else:
        option = typer.Option(f"--{dashed}", help=text, show_default=shown, rich_help_panel=panel)
    annotation = Annotated[kind | None, option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def with_model_options(model: type[BaseModel], panel: str):
    """Give a command `fn(..., **fields)` one option per field of `model`; fn receives the fields
    given on the command line (None values, i.e. flags not given, are dropped)."""

    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)  # Typer reads __signature__ as it is
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        generated = [option_parameter(name, field, panel) for name, field in model.model_fields.items()]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            given = {k: v for k, v in kwargs.items() if k in model.model_fields and v is not None}
            rest = {k: v for k, v in kwargs.items() if k not in model.model_fields}
            return fn(*args, **rest, **given)

        command.__signature__ = inspect.Signature(own + generated)
        command.__annotations__ = {p.name: p.annotation for p in own + generated}
        return command

    return decorate
