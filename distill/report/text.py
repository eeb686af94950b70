"""How numbers read in the report's Markdown: one formatter per kind of number."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

from distill.report.records import as_float


def fmt(value: Any, how: Callable[[Any], str]) -> str:
    return "—" if value is None else how(value)


def size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def points(a: float, b: float) -> str:
    """Difference of two accuracies in [0, 1], in signed percentage points."""
    return f"{100 * (a - b):+.1f}"


def duration(seconds: Any) -> str:
    s = as_float(seconds)
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m" if s >= 3600 else f"{s / 60:.1f} min"


def plain(text: Any) -> str:
    """Text that came from a file or a user (a class name, an arch label, a CPU's name), as
    Markdown that shows it literally: no tags, no emphasis, and safe inside a table cell (a
    newline would end the row, a `|` split it)."""
    s = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|#!~<>])", r"\\\1", s)


def code(text: Any) -> str:
    """`text` as inline code, whatever backticks, pipes or newlines it holds."""
    s = " ".join(str(text).split()).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"
