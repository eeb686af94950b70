"""Where the report's files go: every file is written atomically, through one function."""

from __future__ import annotations

import re
from pathlib import Path

from distill.files import atomic_write

PLOTS = "plots"  # folder beside report.md; the Markdown links plots/NAME.png


MARK = "<!-- written by distill report; regenerated on every run -->"


def is_ours(path: Path) -> bool:
    """A report.md this tool wrote (and may replace), recognised by its first line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() == MARK
    except OSError:
        return False


def save_figure(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)
