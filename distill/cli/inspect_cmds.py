"""`distill models`, `budget`, `eval` and `report`: looking at architectures, checkpoints, runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import typer
from rich.table import Table

from distill.budget import DEFAULT_BUDGET, format_count, parse_budget
from distill.cli.common import (
    command,
    console,
    theirs,
)
from distill.console import styled
from distill.flags import Flags, with_settings
from distill.memory import MAX_BATCH, MAX_CLASSES

# Models and budgets


@command(
    name="models",
    epilog="Examples:\n\n  distill models\n\n  distill models --json > models.json\n\n"
    "  distill models --fit resnet18@5M",
)
def models_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    fit: str = typer.Option(None, "--fit", help="Fit FAMILY@BUDGET and show the plan."),
) -> None:
    """List every registered architecture with params and MACs at 32x32 (or fit one)."""
    from distill.models_info import describe_fit, describe_models

    if fit:
        show_fit(describe_fit(fit), as_json)
        return
    rows = describe_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Registered architectures (budget {format_count(DEFAULT_BUDGET)})")
    for col in ("name", "role", "params", "MACs", "within budget"):
        table.add_column(col, justify="right" if col in ("params", "MACs") else "left")
    for r in rows:
        ok = r["params"] <= DEFAULT_BUDGET
        table.add_row(
            r["name"],
            r["role"],
            f"{r['params']:,}",
            format_count(r["macs"]),
            styled("yes", "green") if ok else styled("no", "red"),
        )
    console.print(table)
    console.print("Any of these fits a budget as FAMILY@BUDGET, e.g. resnet34@2.5M.")


def show_fit(fit: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(fit, indent=2))
        return
    plan = fit["plan"]
    table = Table(title=f"{fit['name']}: {fit['family']} fitted to {format_count(fit['budget'])}")
    for col in ("", "stem", "stage widths", "params", "MACs"):
        table.add_column(col, justify="left" if col in ("", "stage widths") else "right")
    from distill.registry import model_config

    family = model_config(fit["family"]).to_dict()
    for label, p, params, macs in (
        (fit["family"], family, fit["family_params"], fit["family_macs"]),
        (fit["name"], plan, fit["params"], fit["macs"]),
    ):
        table.add_row(
            label,
            str(p["stem_width"]),
            ",".join(map(str, p["widths"])),
            f"{params:,}",
            format_count(macs),
        )
    console.print(table)
    used = f"{fit['budget_used']:.1%} of the parameter budget"
    if fit.get("macs_used") is not None:
        used += f", {fit['macs_used']:.1%} of the MAC ceiling"
    console.print(f"uses {used}")


@command(
    name="budget",
    epilog="Examples:\n\n  distill budget resnet18-5m\n\n  distill budget runs/s.pt --budget 2.5M"
    "\n\n  distill budget resnet18@5M --json",
)
def budget_cmd(
    target: str = typer.Argument(..., help="An architecture, FAMILY@BUDGET, or a checkpoint .pt."),
    budget: str = typer.Option("5M", help="Parameter budget, e.g. 5M, 2.5M, 800k."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Params and MACs per stage; exit 1 when over budget."""
    from distill.budget import stage_costs
    from distill.models_info import load_any_model

    limit = parse_budget(budget)
    model, label, input_size = load_any_model(target)
    costs = stage_costs(model, input_size)
    params, macs = sum(c.params for c in costs), sum(c.macs for c in costs)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "target": target,
                    "parts": [c.__dict__ for c in costs],
                    "params": params,
                    "macs": macs,
                    "budget": limit,
                    "within": params <= limit,
                },
                indent=2,
            )
        )
    else:
        table = Table(title=f"{label} at {input_size[1]}x{input_size[2]}")
        table.add_column("part")
        table.add_column("params", justify="right")
        table.add_column("MACs", justify="right")
        for c in costs:
            table.add_row(c.name, f"{c.params:,}", format_count(c.macs))
        table.add_row("total", f"{params:,}", format_count(macs), style="bold")
        console.print(table)
    if params > limit:
        if not as_json:
            console.print(styled("over budget:", "red"), f"{params:,} > {limit:,} parameters")
        raise typer.Exit(1)
    if not as_json:
        console.print(styled("within budget:", "green"), f"{params:,} <= {limit:,} parameters")


# ---------------------------------------------------------------------------------------------
# Evaluation and deployment


@command(
    name="eval",
    epilog="Examples:\n\n  distill eval runs/s.pt\n\n  distill eval runs/s.pt --tta\n\n"
    "  distill eval runs/s.onnx --split val --json",
)
@with_settings(
    data=theirs("the model's", only=("source", "val_size", "split_seed", "data_root", "cache_dir"))
)
def eval_cmd(
    flags: Flags,
    model: Path = typer.Argument(..., help="A checkpoint .pt or an exported .onnx."),
    split: Literal["val", "test"] = typer.Option("val", help="Which split to evaluate on."),
    tta: bool = typer.Option(
        False, "--tta", help="Average the logits of each image and its mirror (2x the cost)."
    ),
    device: Literal["auto", "cpu", "cuda"] = typer.Option("auto", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Top-1, top-5, per-class accuracy and confusion matrix of a model on a data split."""
    from distill.evaluation import evaluate_file

    result = evaluate_file(model, data=flags["data"], split=split, device=device, tta=tta)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    _, height, width = result["input_size"]
    images = f"{result['count']:,} images at {height}x{width}"
    title = f"{model} on {result['source']} ({split}, {images})"
    table = Table(title=title + (", flip TTA" if tta else ""))
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name, acc in zip(result["classes"], result["per_class"], strict=True):
        table.add_row(name, f"{acc:.2%}")
    console.print(table)
    if len(result["classes"]) <= 20:
        conf = Table(title="confusion (rows: true, columns: predicted)")
        conf.add_column("")
        for i in range(len(result["classes"])):
            conf.add_column(str(i), justify="right")
        for i, (name, row) in enumerate(zip(result["classes"], result["confusion"], strict=True)):
            conf.add_row(f"{i} {name}", *(str(v) for v in row))
        console.print(conf)
    console.print(
        styled(f"top-1 {result['accuracy']:.2%}", "bold"),
        f" top-5 {result['top5']:.2%}  loss {result['loss']:.4f}",
    )


@command(
    name="compare",
    epilog="Examples:\n\n  distill compare runs/t.pt runs/s.pt runs/p.pt\n\n"
    "  distill compare runs/   (every run folder under runs/)\n\n"
    "  distill compare runs/ --plot compare.png --json",
)
def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="Checkpoints or run folders (searched deep)."),
    plot: Path = typer.Option(None, help="Also draw val top-1 against MACs into this PNG."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --plot file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Compare runs in one table, best val top-1 first: model, params, MACs, image size,
    recipe, KD method, val top-1, int8 top-1 and batch-1 latency where an export or a
    bench.json beside the checkpoint measured them."""
    from distill.compare import compare, plot_rows, rows_table
    from distill.files import check_output

    if plot is not None:
        check_output(plot, force, (".png",), flag="--plot")
    rows = compare(runs)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        title = f"{len(rows)} model{'s' * (len(rows) != 1)}, best val top-1 first"
        table = rows_table(rows, title)
        console.print(table)
    if plot is not None:
        drawn = plot_rows(rows, plot)
        if drawn is not None and not as_json:
            console.print(styled("wrote", "green"), str(drawn))


@command(
    name="kd-methods",
    epilog="Examples:\n\n  distill kd-methods --no-time\n\n"
    "  distill kd-methods --student resnet18-quarter --teacher resnet18 --classes 10\n\n"
    "  distill kd-methods --device cuda --batch-size 64 --steps 10 --repeats 5",
)
def kd_methods_cmd(
    student: str = typer.Option("resnet8x4", help="Student architecture of the pair."),
    teacher: str = typer.Option("resnet32x4", help="Teacher architecture of the pair."),
    classes: int = typer.Option(
        100, min=2, max=MAX_CLASSES, help="Classes of the pair's classifier."
    ),
    batch_size: int = typer.Option(64, min=1, max=MAX_BATCH, help="Images per timed step."),
    steps: int = typer.Option(1, min=1, max=1000, help="Training steps per timed block."),
    repeats: int = typer.Option(2, min=1, max=1000, help="Timed blocks per method (median)."),
    device: Literal["auto", "cpu", "cuda"] = typer.Option("auto", help="auto, cpu or cuda."),
    time_steps: bool = typer.Option(
        True, "--time/--no-time", help="Time each method's step against Hinton's."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every distillation method (--kd): what it needs, the parameters it trains beside the
    student (never saved with it), and its training step's cost relative to Hinton KD, measured
    now on this machine with random images."""
    from distill.kd.table import method_table
    from distill.registry import get_entry

    get_entry(student), get_entry(teacher)  # an unknown name: one line, before any work
    r = method_table(
        student, teacher, num_classes=classes, batch_size=batch_size, steps=steps,
        repeats=repeats, device=device, timed=time_steps,
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    title = (
        f"Distillation methods, {teacher} -> {student} ({format_count(r['student_params'])} "
        f"params), {classes} classes"
    )
    table = Table(title=title)
    columns = ["--kd", "needs", "ensembles", "extra params", "extra state"]
    if time_steps:
        columns += ["ms/step", "vs hinton"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("--kd", "needs", "ensembles") else "right")
    for row in r["rows"]:
        cells = [
            row["method"],
            row["needs"],
            "yes" if row["ensembles"] else "one teacher",
            f"{row['extra_params']:,}",
            f"{row['extra_state_mb']:.1f} MB",
        ]
        if time_steps:
            cells += [f"{row['ms_per_step']:.0f}", f"{row['vs_hinton']:.2f}x"]
        table.add_row(*cells)
    console.print(table)
    if time_steps:
        console.print(
            f"batch {r['batch_size']} on {r['device']} ({r['precision']}, {r['threads']} "
            "threads); extra state: the method's parameters and buffers (CRD's bank for "
            "50,000 images), saved in NAME.last.pt only"
        )


@command(
    name="report",
    epilog="Examples:\n\n  distill report runs/demo\n\n"
    "  distill report my-models/   (any folder of distill .pt / .onnx files)",
)
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A pipeline run folder, or any folder of models."),
    force: bool = typer.Option(
        False, "--force", help="Replace a report.md that distill did not write."
    ),
) -> None:
    """Markdown report with PNG plots: table, KD gain, curves, accuracy vs params and latency."""
    from distill.report import write_report

    path = write_report(run_dir, force=force)
    console.print(styled("wrote", "green"), f"{path} (plots in {path.parent / 'plots'})")
