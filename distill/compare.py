"""`distill compare RUN...`: the models of several runs in one table, best first.

A RUN is a checkpoint, an ONNX file or a folder (searched with its subfolders, so `runs/`
holding `teacher/`, `teacher2/`, ... compares them all). Each checkpoint is one row: its
architecture, size, cost, how it was trained and its val top-1; beside it the int8 export's
top-1 and the batch-1 latency where an export or a bench.json in its folder measured them. The
report's readers (distill/report/collect.py) find them, so both agree on every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.checkpoint import load_checkpoint
from distill.console import note
from distill.errors import UserError
from distill.report.collect import collect_models
from distill.report.records import Model


@dataclass(frozen=True)
class Row:
    path: Path
    role: str
    arch: str
    params: int | None
    macs: int | None
    image_size: int | None
    recipe: str
    kd: str
    val_accuracy: float | None
    int8_accuracy: float | None
    latency_ms: float | None  # batch 1, p50, the fastest measured file of this model

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def compare(targets: list[Path]) -> list[Row]:
    """One row per checkpoint named or found in `targets`, best val top-1 first."""
    if not targets:
        raise UserError("nothing to compare; pass checkpoints or run folders")
    rows: dict[Path, Row] = {}
    noted: set[Path] = set()  # a file reached by two ways (a link to a folder) is said once
    for target in targets:
        for folder, only in _folders(Path(target)):
            try:
                found = collect_models(folder)
            except UserError:
                if only is not None:  # a file named on the command line must be read
                    raise
                continue  # a subfolder of other .pt files (a data cache): not a run
            models, unreadable = found.models, dict(found.unreadable)
            if only in unreadable:
                raise UserError(unreadable[only])
            if only is not None and only not in {m.path.name for m in models}:
                load_checkpoint(folder / only)  # resume state, named: says what it is
            if only is None:
                _note_unreadable(folder, unreadable, noted)
            for m in models:
                if m.is_onnx or (only is not None and m.path.name != only):
                    continue
                rows.setdefault(m.path.resolve(), _row(m, models))
    if not rows:
        raise UserError(
            f"no distill checkpoints in {', '.join(map(str, targets))}; pass .pt files or "
            "folders holding them"
        )
    return sorted(rows.values(), key=lambda r: (-(r.val_accuracy or -1), str(r.path)))


def _note_unreadable(folder: Path, unreadable: dict[str, str], noted: set[Path]) -> None:
    """A checkpoint in a run folder that could not be read is said, not left out in silence
    (a folder where none could be read is not a run: it is passed over)."""
    for name, why in unreadable.items():
        path = (folder / name).resolve()
        if path not in noted:
            noted.add(path)
            note(f"left out: {why}")


def _folders(target: Path) -> list[tuple[Path, str | None]]:
    """(folder, the one file to take or None for all) for a file or a folder and its
    subfolders."""
    if target.is_file():
        if target.suffix != ".pt":
            raise UserError(f"{target} is not a checkpoint; pass .pt files or run folders")
        return [(target.parent, target.name)]
    if not target.is_dir():
        raise UserError(f"{target} does not exist; pass checkpoints or run folders")
    folders = [target, *sorted(p for p in target.rglob("*") if p.is_dir())]
    return [(f, None) for f in folders if any(f.glob("*.pt"))]


def _row(m: Model, siblings: tuple[Model, ...]) -> Row:
    exports = [s for s in siblings if s.is_onnx and s.source == m.name]
    int8 = [s.val_accuracy for s in exports if s.precision == "int8" and s.val_accuracy is not None]
    latencies = [s.latency_ms for s in (m, *exports) if s.latency_ms]
    recipe = m.ckpt.get("recipe") or {}
    epochs = recipe.get("epochs")
    size = m.ckpt.get("input_size") or [None, None, None]
    kd = m.ckpt.get("kd") or {}
    return Row(
        path=m.path,
        role=m.role,
        arch=m.arch,
        params=m.params,
        macs=m.macs,
        image_size=size[1],
        recipe=f"{recipe.get('name', '?')}, {epochs} ep"
        if epochs
        else str(recipe.get("name", "?")),
        kd=str(kd.get("method", "")) if m.ckpt.get("teachers") else "",
        val_accuracy=m.val_accuracy,
        int8_accuracy=max(int8) if int8 else None,
        latency_ms=min(latencies) if latencies else None,
    )


def plot_rows(rows: list[Row], path: Path) -> Path | None:
    """Val top-1 against MACs (log scale), one labelled point per model."""
    from distill.report.figures import new_figure, place_labels, short_count
    from distill.report.output import save_figure
    from distill.report.records import COLORS

    pts = [r for r in rows if r.macs and r.val_accuracy is not None]
    if not pts:
        return None
    fig = new_figure(8, 5)
    ax = fig.subplots()
    ax.set_xscale("log")
    for r in pts:
        ax.scatter([r.macs], [100 * r.val_accuracy], color=COLORS.get(r.role, "black"), zorder=3)
    place_labels(ax, [(r.macs, 100 * r.val_accuracy, _label(r)) for r in pts])
    lo, hi = min(r.macs for r in pts), max(r.macs for r in pts)
    ax.set_xlim(lo / 1.6, hi * 3)
    ax.xaxis.set_major_formatter(lambda v, _pos: short_count(v))
    ax.set_xlabel("MACs per image (log scale)")
    ax.set_ylabel("val top-1 accuracy (%)")
    ax.set_title("Accuracy vs compute (upper left is better)")
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def _label(r: Row) -> str:
    return f"{r.path.parent.name}/{r.path.name}" if r.path.parent.name else r.path.name


COLUMNS = ("model", "role", "arch", "params", "MACs", "size", "recipe", "KD", "val top-1",
           "int8 top-1", "latency b1")  # fmt: skip
RIGHT = ("params", "MACs", "size", "val top-1", "int8 top-1", "latency b1")
TEXT = ("role", "arch", "recipe", "KD")  # read from files: escaped where the format needs it


def row_cells(r: Row) -> dict[str, str]:
    """A row's cells as text, by column (the model's path is the caller's to show)."""
    from distill.budget import format_count

    return {
        "role": r.role,
        "arch": r.arch,
        "params": f"{r.params:,}" if r.params else "-",
        "MACs": format_count(r.macs) if r.macs else "-",
        "size": f"{r.image_size}px" if r.image_size else "-",
        "recipe": r.recipe,
        "KD": r.kd or "-",
        "val top-1": f"{r.val_accuracy:.2%}" if r.val_accuracy is not None else "-",
        "int8 top-1": f"{r.int8_accuracy:.2%}" if r.int8_accuracy is not None else "-",
        "latency b1": f"{r.latency_ms:.2f} ms" if r.latency_ms else "-",
    }


def rows_table(rows: list[Row], title: str):
    """The rows as a rich table (`distill compare`, the pipeline's closing table)."""
    from rich.table import Table

    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in RIGHT else "left")
    for r in rows:
        table.add_row(str(r.path), *row_cells(r).values())
    return table
