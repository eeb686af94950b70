"""Command-line options generated from the settings dataclasses (distill/settings.py).

Each flag's name, help text, type, choices and shown default come from its field, so they are
written once. `@with_settings(data=Group(DataSettings), ...)` adds each group's options to a typer
command, after the command's own parameters; the command then receives `flags: Flags`, whose
`flags[group]` holds only what the user typed. "Not typed" matters: a student's split defaults to
its teacher's and a recipe's fields to the named recipe's, so defaults are applied by the
library, never by the command line.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import typer
from rich.markup import escape

from distill.typed import build, flag_of

SEP = "__"  # generated parameter names are GROUP__FIELD


@dataclass(frozen=True)
class Group:
    """The options of one settings class on one command."""

    cls: type
    only: tuple[str, ...] = ()  # expose just these fields (default: every field with cli=True)
    skip: tuple[str, ...] = ()
    shown_default: str | None = None  # e.g. "the recipe's": what every field defaults to here
    defaults: Mapping[str, str] | None = None  # the same, per field
    help: Mapping[str, str] | None = None  # per-command help text replacing the field's

    def fields(self) -> list:
        chosen = [
            f
            for f in fields(self.cls)
            if (f.name in self.only if self.only else f.metadata.get("cli"))
            and f.name not in self.skip
        ]
        return chosen


def _flag_type(tp: Any) -> Any:
    """The type typer parses a flag into: Optional stripped, lists typed as comma strings."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if len(args) == 1:
            return _flag_type(args[0])
        return str  # e.g. int | str (a budget): the settings class parses it
    if typing.get_origin(tp) is tuple:
        return str  # "1,32,256"
    if typing.get_origin(tp) is Literal or tp in (int, float, bool, str, Path):
        return tp
    return str


def _parse(value: Any, tp: Any) -> Any:
    """Undo `_flag_type`'s widening: comma lists into tuples (items checked by `build`)."""
    if isinstance(value, str) and typing.get_origin(tp) is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(int(v) if v.lstrip("-").isdigit() else v for v in items)
    return value


def _option(group: Group, f, tp: Any) -> tuple[Any, Any]:
    """(default, annotation) of one generated parameter."""
    # Settings' help is plain text: typer reads help as rich markup, where "[tensorboard]" in
    # "pip install distill[tensorboard]" would be a style tag and vanish.
    help_text = escape((group.help or {}).get(f.name) or f.metadata.get("help", ""))
    flag = flag_of(f)
    decls = [flag, *([f.metadata["short"]] if f.metadata.get("short") else [])]
    kind = _flag_type(tp)
    shown = (group.defaults or {}).get(f.name, group.shown_default) or f.metadata.get("shown")
    if kind is bool and f.default is False and shown is None:  # a switch: typed means True
        return typer.Option(False, *decls, help=help_text, show_default=False), bool
    if kind is bool:
        name = flag.removeprefix("--")
        decls = [f"--{name}/--no-{name}"]
    if shown is None:
        default = f.default if f.default is not Ellipsis else None
        shown = "none" if default in (None, "") else _show(default)  # "": nothing given
    return (
        typer.Option(None, *decls, help=help_text, show_default=shown),
        typing.Optional[kind],  # noqa: UP045 (typer needs a runtime Optional)
    )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@dataclass(frozen=True)
class Flags:
    """What the user typed, per group: {field: value}, flags left out are absent."""

    given: Mapping[str, Mapping[str, Any]]
    groups: Mapping[str, Group]

    def __getitem__(self, group: str) -> dict[str, Any]:
        return dict(self.given[group])

    def build(self, group: str, **extra: Any) -> Any:
        """The group's settings from its typed flags (plus `extra`), defaults for the rest."""
        g = self.groups[group]
        labels = {f.name: flag_of(f) for f in fields(g.cls)}
        return build(g.cls, self[group] | extra, label=lambda n: labels.get(n, n))


def with_settings(**groups: Group) -> Callable[[Callable], Callable]:
    """Give a typer command the options of each settings group; it receives `flags: Flags`."""

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "flags"]
        generated: list[inspect.Parameter] = []
        kinds: dict[str, Any] = {}
        switches: set[str] = set()  # bool flags off by default: typed means True
        for gname, group in groups.items():
            hints = typing.get_type_hints(group.cls)
            for f in group.fields():
                default, annotation = _option(group, f, hints[f.name])
                name = f"{gname}{SEP}{f.name}"
                kinds[name] = hints[f.name]
                if annotation is bool:
                    switches.add(name)
                generated.append(
                    inspect.Parameter(
                        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                    )
                )

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given: dict[str, dict[str, Any]] = {g: {} for g in groups}
            rest = {}
            for key, value in kwargs.items():
                if key in kinds:
                    gname, fname = key.split(SEP, 1)
                    if value is not None and not (value is False and key in switches):
                        given[gname][fname] = _parse(value, kinds[key])
                else:
                    rest[key] = value
            return fn(flags=Flags(given, groups), **rest)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        del wrapper.__wrapped__  # typer must read the signature below, not fn's
        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return deco
