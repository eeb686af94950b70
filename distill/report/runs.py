"""`distill report` over a folder of runs: the models in its subfolders (`runs/teacher`,
`runs/student2`, ...) compared in one table and one plot, as `distill compare` shows them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from distill.errors import UserError

if TYPE_CHECKING:  # distill.compare reads models through the report's collector
    from distill.compare import Row


def subfolder_rows(run_dir: Path) -> list[Row]:
    from distill.compare import compare

    """Every checkpoint below `run_dir` but not in it, best val top-1 first."""
    try:
        rows = compare([run_dir])
    except UserError:  # nothing anywhere below
        return []
    return [r for r in rows if r.path.parent.resolve() != run_dir.resolve()]


def runs_section(run_dir: Path, plots: Path) -> tuple[list[str], list[Path | None]]:
    from distill.compare import COLUMNS, RIGHT, TEXT, plot_rows, row_cells
    from distill.report.text import code, plain

    rows = subfolder_rows(run_dir)
    if not rows:
        return [], []
    png = plot_rows(rows, plots / "accuracy_vs_compute_of_runs.png")
    lines = [
        "## Runs in subfolders",
        "",
        f"{len(rows)} checkpoints in the folders below this one, best val top-1 first "
        "(`distill compare` prints the same).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c in RIGHT else "---" for c in COLUMNS) + "|",
    ]
    for r in rows:
        cells = {k: plain(v) if k in TEXT else v for k, v in row_cells(r).items()}
        lines.append(
            f"| {code(r.path.relative_to(run_dir))} | " + " | ".join(cells.values()) + " |"
        )
    lines.append("")
    if png is not None:
        lines += [f"![Accuracy vs compute of the runs]({png.parent.name}/{png.name})", ""]
    return lines, [png]
