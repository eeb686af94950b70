"""`distill sweep`: search architectures and recipes under the budget (an Optuna study whose
trials are ordinary distill runs), and `distill sweep --show` of what it found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        help="Search space: a TOML file ([space], optional [sweep]) or a preset: cpu, gpu.",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="The sweep folder: trials, study, plots."),
    teacher: list[Path] = typer.Option(
        None,
        "--teacher",
        help="Teacher checkpoint (repeat for an ensemble); none: label-only trials.",
    ),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    nproc_per_node: int = typer.Option(
        1, "--nproc-per-node", min=1, help="Run each trial under torchrun with this many processes."
    ),
    show: Path = typer.Option(None, "--show", help="Print a sweep folder's results and plots."),
) -> None:
    """Search architectures (FAMILY@BUDGET), recipes and KD settings with an Optuna study whose
    trials are ordinary distill runs, each in its own folder under --out. Workers, processes and
    nodes share the study through its storage; the same command continues an interrupted sweep."""
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
    console.print(f"sweep {out}: {job.settings.trials} trials, study in {job.storage_url}")
    run_sweep(job, say=console.print)
    show_sweep(out)


def show_sweep(folder: Path) -> None:
    from distill.budget import format_count
    from distill.sweep import results

    job, study = results.load(folder)
    objective = job["settings"]["objective"]
    rows = results.rows(study, objective)
    keys = results.varying(rows)
    table = Table(title=f"sweep {folder}: {len(rows)} trials ({objective})")
    for name in ("#", "arch", "params", "MACs", *keys, "best ep", "val top-1"):
        table.add_column(name, justify="right" if name not in ("arch",) else "left")
    second = results.SECOND.get(objective)
    if second:
        table.add_column(second, justify="right")
    table.add_column("state")
    table.add_column("note")
    for r in rows:
        cells = [
            str(r["trial"]), r["arch"],
            format_count(r["params"]) if r["params"] else "-",
            format_count(r["macs"]) if r["macs"] else "-",
            *[results.fmt(r["settings"].get(k, "-")) for k in keys],
            str(r["best_epoch"] or "-"),
            f"{r['val_top1']:.2%}" if isinstance(r["val_top1"], float) else "-",
        ]  # fmt: skip
        if second:
            cells.append(results.fmt(r["second"]) if r["second"] is not None else "-")
        cells += [r["state"], r["note"]]
        table.add_row(*cells)
    console.print(table)
    best = results.best(study)
    if not best:
        console.print("no finished trial yet")
        return
    if len(best) == 1:
        t = best[0]
        console.print(
            f"best: trial {t.number}, val top-1 {t.values[0]:.2%}, {t.params.get('arch')}, "
            f"{_settings(t.params)}"
        )
    else:
        console.print(f"Pareto front (val top-1 vs {second}):")
        for t in best:
            console.print(
                f"  trial {t.number}: {t.values[0]:.2%}, {results.fmt(t.values[1])} {second}"
            )
    conf = results.confirmation(folder)
    chosen = best[0]
    if conf:
        for c in conf["candidates"]:
            console.print(
                f"confirmed trial {c['trial']}: val top-1 {c['val_mean']:.2%} +- {c['val_std']:.2%} "
                f"over {len(c['runs'])} seeds"
            )
        console.print(
            f"winner: trial {conf['winner']}, held-out top-1 {conf['holdout_mean']:.2%} +- "
            f"{conf['holdout_std']:.2%} on {conf['holdout']}"
        )
        chosen = study.trials[conf["winner"]]
    paths = results.plots(study, Path(folder) / "plots")
    if paths:
        console.print("plots: " + ", ".join(str(p) for p in paths))
    console.print(f"to ONNX: {results.export_hint(folder, chosen)}")


def _settings(params: dict[str, Any]) -> str:
    from distill.sweep.results import fmt

    return ", ".join(f"{k} {fmt(v)}" for k, v in params.items() if k != "arch")
