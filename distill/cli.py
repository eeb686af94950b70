"""The `distill` command line: thin typer commands over library functions a user could call too.

Every command validates its inputs before writing anything; a user's mistake (a UserError) is
printed as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from distill.budget import DEFAULT_BUDGET, format_count, parse_budget
from distill.errors import exits_on_user_error

app = typer.Typer(
    help="Distil and compress small-image classifiers under a hard parameter budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
teacher_app = typer.Typer(help="Train teacher models.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
console = Console()


def command(group: typer.Typer = app, name: str | None = None, **kwargs):
    """`@command()` registers a CLI command whose UserErrors exit 2 with one line."""

    def deco(fn):
        return group.command(name, **kwargs)(exits_on_user_error(fn))

    return deco


@command(
    name="models",
    epilog="Examples:\n\n  distill models\n\n  distill models --json > models.json",
)
def models_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List every registered architecture with params and MACs at 32x32."""
    from distill.models_info import describe_models

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
            "[green]yes[/]" if ok else "[red]no[/]",
        )
    console.print(table)


@command(
    name="budget",
    epilog="Examples:\n\n  distill budget resnet18-5m\n\n  distill budget runs/s.pt --budget 2.5M",
)
def budget_cmd(
    target: str = typer.Argument(..., help="A registered architecture name or a checkpoint .pt."),
    budget: str = typer.Option("5M", help="Parameter budget, e.g. 5M, 2.5M, 800k."),
) -> None:
    """Params and MACs per stage; exit 1 when over budget."""
    from distill.models_info import load_any_model

    limit = parse_budget(budget)
    model, label, input_size = load_any_model(target)
    from distill.budget import stage_costs

    costs = stage_costs(model, input_size)
    table = Table(title=f"{label} at {input_size[1]}x{input_size[2]}")
    table.add_column("part")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for c in costs:
        table.add_row(c.name, f"{c.params:,}", format_count(c.macs))
    params, macs = sum(c.params for c in costs), sum(c.macs for c in costs)
    table.add_row("[bold]total[/]", f"[bold]{params:,}[/]", f"[bold]{format_count(macs)}[/]")
    console.print(table)
    if params > limit:
        console.print(f"[red]over budget[/]: {params:,} > {limit:,} parameters")
        raise typer.Exit(1)
    console.print(f"[green]within budget[/]: {params:,} <= {limit:,} parameters")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
