"""Frozen dataclasses built from plain values with their types checked: the machinery behind
distill/settings.py, shared by flags, TOML files and checkpoint records.

`setting()` declares a field with its help text and flag; `build()` makes an instance from a
mapping, checking each value against the field's annotation (no silent conversions: "no" is not a
bool, 2.5 is not an int, every float must be finite) and naming the key as the user wrote it;
`__post_init__` range checks raise `SettingError` through `require`, `positive`, ..., which
`build` rewrites with the same name.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import field, fields, replace
from pathlib import Path
from typing import Any, Literal

from distill.errors import UserError


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    cli: bool = True,
    short: str | None = None,
    factory: Callable[[], Any] | None = None,
    shown: str | None = None,
) -> Any:
    """A dataclass field with its help text and command-line flag (default: --field-name).

    `cli=False` keeps a field out of the generated command-line options (set by recipes, TOML
    and checkpoints only). `shown` says what an empty default means ("physical cores"), in
    `--help` and the README's settings table.
    """
    meta = {"help": help, "flag": flag, "cli": cli, "short": short, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


class SettingError(UserError):
    """A value out of range. `build` rewrites the field name as the user wrote it (a flag, a TOML
    key, a checkpoint key)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem


def require(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise SettingError(name, problem)


def _finite(x: float) -> bool:
    return math.isfinite(x)


def as_paths(obj: Any, *names: str) -> None:
    """Path fields given as strings from Python (a frozen dataclass: object.__setattr__)."""
    for n in names:
        v = getattr(obj, n)
        if v is not None:  # "~" expanded always: one spelling of each path, to compare and hash
            object.__setattr__(obj, n, Path(v).expanduser())


def whole_numbers_as_floats(obj: Any) -> None:
    """A float field given an int from Python (`warmup_epochs=3`) holds 3.0: one spelling of
    each value, so records, fingerprints and printed configs agree however it was written."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, int) and not isinstance(v, bool) and float in _members(hints[f.name]):
            object.__setattr__(obj, f.name, float(v))


def _members(tp: Any) -> tuple:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        require(v is None or v > 0, n, f"must be greater than 0, got {v}")


def non_negative(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        require(v is None or v >= 0, n, f"must be 0 or more, got {v}")


# torch.Generator.manual_seed takes a signed 64-bit integer; numpy's legacy RandomState (which
# Optuna's samplers seed) an unsigned 32-bit one.
MAX_SEED = 2**63 - 1
MAX_SAMPLER_SEED = 2**32 - 1


def seeds(obj: Any, *names: str, limit: int = MAX_SEED) -> None:
    """Seeds: whole numbers from 0 to `limit`, refused here rather than deep in a library."""
    for n in names:
        v = getattr(obj, n)
        require(0 <= v <= limit, n, f"must be from 0 to {limit:,}, got {v:,}")


def fraction(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        require(v is None or 0 <= v <= 1, n, f"must be between 0 and 1, got {v}")


# ---------------------------------------------------------------------------------------------
# Types: one checker for flags, TOML and checkpoint records


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        item = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(item, type_name(item))}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        Path: "a path",
        type(None): "nothing",
    }.get(tp, str(tp))


def coerce(value: Any, tp: Any, name: str, label: Callable[[str], str] = str) -> Any:
    """`value` as type `tp`, or a UserError naming the setting and the expected type.

    No silent conversions: "no" is not a bool, 2.5 is not an int, "3" is not a number; ints are
    accepted where floats are expected, and every float must be finite.
    """
    origin = typing.get_origin(tp)
    wrong = UserError(f"{label(name)} must be {type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, name, label)
            except UserError:
                continue
        raise wrong
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
        raise wrong
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise wrong
        # The item's position after the setting's own label: "--batch-sizes item 2", never
        # a Python index pasted into the name, which the label could no longer map to a flag.
        return tuple(
            coerce(v, item, name, lambda n, i=i: f"{label(n)} item {i + 1}")
            for i, v in enumerate(value)
        )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise wrong
        return build(tp, value, label=lambda n: label(f"{name}.{n}"))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"{label(name)} must be a finite number, got {value}")
            return float(value)
        raise wrong
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong
    if tp is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value).expanduser()
        raise wrong
    if tp is Any:
        return value
    raise TypeError(f"settings type {tp!r} of {name} is not supported")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(
    cls: type,
    values: Mapping[str, Any],
    *,
    label: Callable[[str], str] = str,
    base: Any = None,
    unknown: Literal["error", "ignore"] = "error",
) -> Any:
    """An instance of the settings class `cls` from plain values (flags, TOML, a record).

    Every value's type is checked; `base` (an instance) supplies the fields not given; keys the
    class lacks are an error naming the valid ones (`unknown="ignore"` for records written by
    other versions). `label(field)` is how the user wrote a field's name, used in every message.
    """
    if not isinstance(values, Mapping):
        raise UserError(f"{label('')} must be a table of settings, got {values!r}".lstrip())
    hints = _hints(cls)
    names = {f.name for f in fields(cls) if f.init}
    extra = sorted(set(values) - names)
    if extra and unknown == "error":
        raise UserError(
            f"unknown setting {label(extra[0])}; valid ones: {', '.join(sorted(names))}"
        )
    kwargs = {k: coerce(v, hints[k], k, label) for k, v in values.items() if k in names}
    try:
        return replace(base, **kwargs) if base is not None else cls(**kwargs)
    except SettingError as e:
        raise UserError(f"{label(e.name)} {e.problem}") from None
    except TypeError as e:  # a required field missing
        missing = [f.name for f in fields(cls) if f.name not in kwargs and _required(f)]
        if missing:
            raise UserError(f"missing setting {label(missing[0])}") from None
        raise UserError(f"{label('')}: {e}") from None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain values (lists, str paths) that survive `torch.load(weights_only=True)` and JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(obj)
