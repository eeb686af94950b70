"""How numbers read in the report's Markdown: one formatter per kind of number."""

from __future__ import annotations

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
