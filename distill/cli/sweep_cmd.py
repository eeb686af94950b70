"""`distill sweep`: search architectures and recipes under the budget (an Optuna study whose
trials are ordinary distill runs), and `distill sweep --show` of what it found."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from distill.cli.common import DATA, command, console
from distill.errors import UserError
from distill.flags import Flags, Group, with_settings
from distill.sweep.settings import SweepSettings


@command(
    name="sweep",
    epilog="Examples:\n\n"
    "  distill sweep --data ../shared/data/cifar10-jpeg --teacher runs/t.pt --space cpu "
    "--train-size 4000 --val-size 1000 --trials 12 --out runs/sweep\n\n"
    "  distill sweep --data cifar10 --teacher t.pt --space gpu --workers 8 --out runs/sweep\n\n"
    "  distill sweep ... --storage postgresql://user@db/distill   (the same command on every "
    "node)\n\n"
    "  distill sweep --show runs/sweep",
)
@with_settings(data=DATA, sweep=Group(SweepSettings))
def sweep_cmd(
    flags: Flags,
    space: str = typer.Option(
        None,
        "--space",
        help="Search space: a TOML file (a space table, optionally a sweep table) or a preset: "
        "cpu, gpu.",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="The sweep folder: trials, study, plots."),
    teacher: list[Path] = typer.Option(
        None,
        "--teacher",
        help="Teacher checkpoint (repeat for an ensemble); none: label-only trials.",
    ),
    device: Literal["auto", "cpu", "cuda"] = typer.Option(
        "auto", help="auto (CUDA when present), cpu or cuda."
    ),
    nproc_per_node: int = typer.Option(
        1, "--nproc-per-node", min=1, help="Run each trial under torchrun with this many processes."
    ),
    show: Path = typer.Option(None, "--show", help="Print a sweep folder's results and plots."),
) -> None:
    """Search architectures (FAMILY@BUDGET), recipes and KD settings with an Optuna study whose
    trials are ordinary distill runs, each in its own folder under --out. Workers, processes and
    nodes share the study through its storage; the same command continues an interrupted sweep."""
    from distill.resume import TrainingInterrupted
    from distill.sweep.job import make_job
    from distill.sweep.launch import run_sweep

    if show is not None:
        show_sweep(show)
        return
    if space is None:
        raise UserError("no --space given; pass a space file or a preset (cpu, gpu)")
    if out is None:
        raise UserError("no --out given; pass the sweep folder, e.g. --out runs/sweep")
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {device!r}")
    if not teacher and not flags["data"].get("source"):
        raise UserError("no --data given; pass --data (cifar10, cifar100 or a folder)")
    job = make_job(
        out, space, flags["sweep"], flags["data"], [str(t) for t in teacher or []], device,
        nproc_per_node,
    )  # fmt: skip
    try:
        run_sweep(job, say=console.print)
    except TrainingInterrupted:
        typer.echo(
            "interrupted: the running trial's state is saved in its folder; run the same command "
            "to continue the sweep",
            err=True,
        )
        raise typer.Exit(130) from None
    show_sweep(out)


def show_sweep(folder: Path) -> None:
    from distill.sweep import results

    job, study = results.load(folder)
    objective = job["settings"]["objective"]
    columns, rows = results.table(study, objective)
    table = Table(title=f"sweep {folder}: {len(rows)} trials ({objective})")
    for name in columns:
        table.add_column(name, justify="left" if name in ("arch", "state", "note") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    lines = results.summary(study, Path(folder), objective)
    paths = results.plots(study, Path(folder) / "plots")
    if paths:
        lines.insert(-1, "plots: " + ", ".join(str(p) for p in paths))
    for line in lines:
        console.print(line, highlight=False)
