"""README tables generated from the settings classes, so the documentation cannot drift from the
code: `python -m distill.docs` rewrites them in README.md, and tests/test_cli_ux.py fails when
the README differs from what this module generates.

A generated table sits between `<!-- NAME: generated ... -->` and `<!-- /NAME -->` lines.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _cell(text: str) -> str:
    # A bare | ends a Markdown table cell, inside code spans too (GitHub's tables).
    return text.replace("|", "\\|")


def pipeline_settings_table() -> str:
    """Every `distill pipeline --config` key: type, default and meaning, one row each."""
    from distill.pipeline.config import reference_rows

    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, meaning in reference_rows():
        shown = default if default in ("—", "preset") or default.startswith("_") else f"`{default}`"
        lines.append(f"| `{_cell(key)}` | {_cell(kind)} | {_cell(shown)} | {_cell(meaning)} |")
    return "\n".join(lines)


def sweep_space_table() -> str:
    """Every key of a `distill sweep --space` file: type, the forms it takes, meaning."""
    from distill.sweep.space import reference_rows

    lines = ["| key | type | forms | meaning |", "|---|---|---|---|"]
    for key, kind, forms, meaning in reference_rows():
        lines.append(f"| `{_cell(key)}` | {_cell(kind)} | {_cell(forms)} | {_cell(meaning)} |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {
    "pipeline-settings": pipeline_settings_table,
    "sweep-space": sweep_space_table,
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}: generated[^\n]*-->\n)(.*?)(<!-- /{name} -->)", re.DOTALL)


def generated_section(text: str, name: str) -> str | None:
    """The text between the markers of table `name` in `text` (None: no markers)."""
    m = _block(name).search(text)
    return m.group(2).removesuffix("\n") if m else None


def update(path: Path = README) -> list[str]:
    """Rewrite every generated table in `path`; return the names of those that changed."""
    text = path.read_text()
    changed = []
    for name, render in TABLES.items():
        if generated_section(text, name) is None:
            raise SystemExit(f"{path} has no <!-- {name}: generated ... --> block")
        new = _block(name).sub(lambda m, t=render(): m.group(1) + t + "\n" + m.group(3), text)
        if new != text:
            changed.append(name)
            text = new
    if changed:
        path.write_text(text)
    return changed


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else README
    names = update(target)
    print(f"{target}: " + (f"rewrote {', '.join(names)}" if names else "already up to date"))
