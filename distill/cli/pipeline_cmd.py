"""`distill pipeline`: every stage in one resumable command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import typer
from rich.markup import escape

from distill import distributed
from distill.cli.common import (
    NPROC,
    command,
    console,
    relaunched,
    resume_command,
)
from distill.console import make_console, styled
from distill.errors import UserError
from distill.settings import DataSettings
from distill.tracking import PIPELINE_HELP, check_mlflow

# The pipeline


@command(
    name="pipeline",
    epilog="Examples:\n\n  distill pipeline --data ../shared/data/cifar10-jpeg --preset quick "
    "-o runs/demo\n\n  distill pipeline --data cifar10 --preset standard -o runs/std\n\n"
    "  distill pipeline --preset standard --config my.toml --print-config\n\n"
    "Rerunning the same command skips finished stages, redoes changed ones and resumes an "
    "interrupted one.",
)
def pipeline_cmd(
    out: Path = typer.Option(None, "-o", "--out", help="Run directory (created; reused)."),
    data: str = typer.Option(
        None, "--data", help=DataSettings.__dataclass_fields__["source"].metadata["help"]
    ),
    preset: Literal["quick", "standard"] = typer.Option(
        "quick", help="quick (a CPU demo in minutes) or standard (GPU)."
    ),
    config: Path = typer.Option(
        None,
        "--config",
        help="TOML overriding the preset, tables \\[data] \\[teacher] \\[student] \\[kd] "
        "\\[prune] \\[export] \\[bench] (README: Pipeline settings).",
    ),
    device: Literal["auto", "cpu", "cuda"] = typer.Option(
        None, help="auto, cpu or cuda.", show_default="the config's, else auto"
    ),
    mlflow: str = typer.Option(
        None,
        "--mlflow",
        help=escape(PIPELINE_HELP),  # rich markup: distill[mlflow] is no style tag
        show_default="the config's, else off",
    ),
    data_root: Path = typer.Option(None, help="Where cifar10/cifar100 are downloaded."),
    cache_dir: Path = typer.Option(None, help="Decoded uint8 cache (never beside the data)."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the resolved stages and exit; with --out, also what a run into it would "
        "do now (each stage kept, resumed or run, and why).",
    ),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the resolved settings as TOML and exit."
    ),
    force: bool = typer.Option(False, "--force", help="Use a non-empty --out that holds no run."),
    quiet: bool = typer.Option(False, "--quiet", help="Print nothing but errors and the result."),
    nproc_per_node: int = NPROC,
) -> None:
    """Teacher -> baseline -> KD student -> prune -> export -> bench -> report, resumable."""
    from distill.timing import phase

    with phase("imports: torch and training"):
        from distill.pipeline import describe, load_config, plan, run_pipeline, to_toml
        from distill.resume import TrainingInterrupted

    flags_data = {"source": data, "data_root": data_root, "cache_dir": cache_dir}
    overrides: dict[str, Any] = {"data": {k: v for k, v in flags_data.items() if v is not None}}
    if device is not None:
        overrides["device"] = device
    if mlflow is not None:
        overrides["mlflow"] = mlflow
    settings = load_config(preset, config, overrides)
    if print_config:
        typer.echo(to_toml(settings), nl=False)
        return
    say = make_console(quiet)
    if dry_run:
        say.print(describe(settings))
        if out is not None:  # and what a run into it would do now, stage by stage
            rows = plan(settings, out, force=force)
            width = max(len(stage) for stage, _, _ in rows)
            for stage, action, why in rows:
                verb = {"skip": "kept", "resume": "resumes", "run": "runs"}[action]
                say.print(f"{stage:<{width}}  {verb}" + (f" ({why})" if why else ""))
        return
    if out is None:
        raise UserError("no run directory given; pass -o/--out DIR")
    if settings.mlflow is not None:
        check_mlflow()  # before any work: the package is an optional extra
    relaunched(nproc_per_node, settings.device)
    started = time.perf_counter()
    try:
        report = run_pipeline(settings, out, force=force, console=say, quiet=quiet)
    except TrainingInterrupted:
        if distributed.is_main():
            typer.echo(
                f"interrupted; rerun the same command to continue: {resume_command()}", err=True
            )
        raise typer.Exit(130) from None
    minutes = (time.perf_counter() - started) / 60
    console.print(
        styled("pipeline finished", "bold green"), f"in {minutes:.1f} min; report: {report}"
    )
