"""Where the report's files go: every file is written atomically, through one function."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLOTS = "plots"  # folder beside report.md; the Markdown links plots/NAME.png


def atomic_write(path: Path, write: Callable[[str], Any]) -> Path:
    """`write(tmp)` into a temp file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from other readers
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)
