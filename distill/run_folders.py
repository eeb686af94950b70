"""Where a training command writes when no --out is given: a new numbered folder per run
(`runs/teacher`, `runs/teacher2`, ...), as ultralytics does, so trying things never overwrites
an earlier result and each run's files (checkpoint, metrics, exports) stay together."""

from __future__ import annotations

from pathlib import Path

RUNS = Path("runs")


def next_run(name: str, root: Path = RUNS) -> Path:
    """`root/NAME/NAME.pt` in the first of NAME, NAME2, NAME3, ... that does not exist yet."""
    n = 1
    while (folder := root / (name if n == 1 else f"{name}{n}")).exists():
        n += 1
    return folder / f"{name}.pt"
