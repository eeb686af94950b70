"""`distill export onnx` (also `python -m export onnx`): its own sub-app, so that export/__main__.py
can run it alone. export/ is the library this command calls; it never imports the CLI.

A user's mistake exits 2 with one line; a graph that disagrees with PyTorch exits 1 with one line
and leaves no file behind.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distill.cli.errors import exits_on_user_error
from distill.console import make_console, styled
from distill.flags import Flags, Group, with_settings
from distill.settings import ExportSettings

app = typer.Typer(
    help="Export checkpoints for deployment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = make_console()
err_console = make_console(stderr=True)


@app.callback()
def group() -> None:
    """Export checkpoints for deployment."""
    # A callback keeps `onnx` a subcommand: typer would otherwise collapse a one-command app,
    # and `python -m export onnx MODEL.pt` would stop working.


def exits_on_parity_error(fn):
    """A graph that failed its check is not the user's mistake: one line, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from export.checks import ParityError

        try:
            return fn(*args, **kwargs)
        except ParityError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@app.command(
    "onnx",
    epilog="Examples:\n\n  distill export onnx runs/s.pt\n\n"
    "  distill export onnx runs/s.pt -o deploy/s.onnx --force\n\n"
    "  distill export onnx runs/s.pt --int8            (writes runs/s.int8.onnx)\n\n"
    "  distill export onnx runs/s.pt --int8 --data ~/data/cifar10-jpeg\n\n"
    "  distill export onnx runs/s.pt --tta -o runs/s.tta.onnx  (flip average in the graph)\n\n"
    "  python -m export onnx runs/s.pt                 (the same command)",
)
@exits_on_user_error
@exits_on_parity_error
@with_settings(export=Group(ExportSettings))
def onnx_cmd(
    flags: Flags,
    checkpoint: Path = typer.Argument(..., help="A checkpoint .pt written by distill."),
    out: Path = typer.Option(
        None,
        "-o",
        "--out",
        help="Output .onnx.",
        show_default="s.onnx (s.int8.onnx, s.fp16.onnx) beside s.pt",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    data: str = typer.Option(
        None,
        "--data",
        help="Where the model's data is, when not where its checkpoint recorded it "
        "(parity and calibration images come from it).",
    ),
    data_root: Path = typer.Option(None, help="Where cifar10/cifar100 were downloaded."),
    cache_dir: Path = typer.Option(None, help="Decoded-data cache directory."),
) -> None:
    """Export a checkpoint to one checked, self-contained ONNX file.

    The graph takes float32 NCHW RGB in [0,1] (normalisation is inside) with a dynamic batch
    axis and returns logits; class names, mean/std and provenance are in its metadata. The file
    is written only after onnx.checker and a comparison with PyTorch on validation images pass.
    """
    from distill.api import export_onnx

    settings = flags.build("export")
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("export", total=None)
        report = export_onnx(
            checkpoint,
            out,
            settings,
            force=force,
            data=data,
            data_root=data_root,
            cache_dir=cache_dir,
            stage=lambda s: bar.update(task, description=s, completed=0, total=None),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    meta = report.metadata
    tta_note = ", flip-average TTA inside" if report.tta else ""
    console.print(
        styled("wrote", "green"),
        f"{report.path}: {meta['arch']} {report.precision}{tta_note}, "
        f"{mb(report.size_bytes)}, opset {meta['opset']}, {report.seconds:.1f} s",
    )
    console.print(report.parity.line(), style=None if report.real_images else "yellow")
    if report.int8_scheme:
        console.print(f"int8 arithmetic: {report.int8_scheme}")
    if report.accuracy is None:
        console.print(
            "val top-1 not measured: the model's data is not on this machine", style="yellow"
        )
    elif report.fp32_accuracy is not None:
        console.print(
            f"val top-1 on {report.eval_images:,} images: int8 {report.accuracy:.2%} vs fp32 "
            f"{report.fp32_accuracy:.2%}; size {mb(report.size_bytes)} vs "
            f"{mb(report.fp32_size_bytes)} ({report.fp32_size_bytes / report.size_bytes:.1f}x "
            "smaller)"
        )
    else:
        source = report.source_accuracy
        console.print(
            f"val top-1 of this file on {report.eval_images:,} images: {report.accuracy:.2%}"
            + (f" (the checkpoint recorded {source:.2%})" if source is not None else "")
        )
