"""The `distill` command line. Each command is three steps: flags -> settings (distill/flags.py
builds them from the settings dataclasses) -> one library call a user could make from Python too
-> print the result.

A user's mistake (a UserError) is one line on stderr and exit code 2; an interruption of a
training command prints the exact command that resumes it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import typer
from rich.table import Table

from distill import __version__, distributed
from distill.budget import DEFAULT_BUDGET, format_count, parse_budget
from distill.console import make_console
from distill.errors import UserError, exits_on_user_error, one_line_usage_errors
from distill.flags import Flags, Group, with_settings
from distill.recipes import RECIPES
from distill.settings import (
    BenchSettings,
    DataSettings,
    KDSettings,
    PruneSettings,
    Recipe,
    RunSettings,
)
from export.cli import app as export_app


def _version(value: bool) -> None:
    if value:
        typer.echo(f"distill {__version__}")
        raise typer.Exit()


one_line_usage_errors()
app = typer.Typer(
    help="Distil and compress small-image classifiers under a hard parameter budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Distil and compress small-image classifiers under a hard parameter budget."""


teacher_app = typer.Typer(help="Train teacher models.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
# `distill export onnx`; the same sub-app runs as `python -m export` (export/__main__.py).
app.add_typer(export_app, name="export")
console = make_console()


def command(group: typer.Typer = app, name: str | None = None, **kwargs: Any):
    """`@command()` registers a CLI command whose UserErrors exit 2 with one line."""

    def deco(fn):
        return group.command(name, **kwargs)(exits_on_user_error(fn))

    return deco


# ---------------------------------------------------------------------------------------------
# Shared flags and groups

RecipeName = Literal[tuple(RECIPES)]  # type: ignore[valid-type]  # choices in --help


def _arch_names(incomplete: str) -> list[str]:
    from distill.registry import list_models

    return [n for n in list_models() if n.startswith(incomplete)]


def arch_option(default: str) -> Any:
    return typer.Option(
        default,
        help="A registered architecture (distill models) or FAMILY@BUDGET, e.g. resnet18@5M.",
        autocompletion=_arch_names,
    )


RECIPE = typer.Option("standard", help="Named training recipe (README: Recipes).")
NPROC = typer.Option(
    1,
    "--nproc-per-node",
    help="Train with this many processes on this machine (one per GPU), relaunched under "
    "torchrun; the global batch is --batch-size x processes and the lr follows it.",
    min=1,
)
DATA = Group(DataSettings, skip=("image_size",))
RUN = Group(RunSettings)
RECIPE_FLAGS = Group(Recipe, shown_default="the recipe's")
KD = Group(KDSettings)
# Students, pruning and evaluation default to the data and split their model was validated on.
THEIRS = {
    "val_size": "Images held out for validation; an explicit value must match the model's.",
    "split_seed": "Seed of the validation split; an explicit value must match the model's.",
}


def theirs(whose: str, **kwargs: Any) -> Group:
    return Group(
        DataSettings,
        help=THEIRS,
        defaults={k: whose for k in ("source", "val_size", "split_seed")},
        **kwargs,
    )


def _resume_command() -> str:
    """The exact command that was run (under torchrun: as torchrun would rerun it)."""
    if os.environ.get("DISTILL_COMMAND"):
        return os.environ["DISTILL_COMMAND"]
    args = [a for a in sys.argv[1:] if a != "--resume"]
    prog = Path(sys.argv[0]).name
    if distributed.launched():
        n = distributed.world_size()
        return shlex.join(["torchrun", f"--nproc_per_node={n}", "-m", "distill", *args])
    head = ["distill"] if prog == "distill" else ["python", "-m", "distill"]
    return shlex.join([*head, *args])


def relaunched(nproc: int) -> bool:
    """Relaunch this very command under torchrun when --nproc-per-node asks for more than one
    process; the parent then only waits and exits with the children's code."""
    if nproc <= 1 or distributed.launched():
        return False
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc-per-node":
            skip = True
            continue
        if not a.startswith("--nproc-per-node="):
            argv.append(a)
    os.environ["DISTILL_COMMAND"] = _resume_command()
    raise typer.Exit(distributed.relaunch(nproc, argv))


def run_training(train: Callable[[], dict[str, Any]], out: Path | None) -> dict[str, Any]:
    """Run a training call; turn an interruption into the command that resumes it (exit 130)."""
    from distill.resume import TrainingInterrupted
    from distill.train import OutputNotWritten

    try:
        ckpt = train()
    except OutputNotWritten as e:
        if distributed.is_main():
            way = (
                f"continue from {e.resume_from} with: {_resume_command()} --resume"
                if e.resume_from
                else "no resumable state was written yet: run the command again"
            )
            typer.echo(f"error: {e}; once there is room, {way}", err=True)
        raise typer.Exit(2) from None
    except TrainingInterrupted as e:
        if distributed.is_main():
            typer.echo(
                f"interrupted: state saved to {e.path}; continue with: "
                f"{_resume_command()} --resume",
                err=True,
            )
        raise typer.Exit(130) from None
    m = ckpt["metrics"]
    test = f", test top-1 {m['test_accuracy']:.2%}" if "test_accuracy" in m else ""
    console.print(
        f"[green]saved[/] {out}: {ckpt['arch']}, {m['params']:,} params, "
        f"val top-1 {m['val_accuracy']:.2%} (top-5 {m.get('val_top5', float('nan')):.2%}){test}"
    )
    return ckpt


def _quiet_console(run: RunSettings):
    return make_console(run.quiet)


# ---------------------------------------------------------------------------------------------
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
            "[green]yes[/]" if ok else "[red]no[/]",
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
        table.add_row("[bold]total[/]", f"[bold]{params:,}[/]", f"[bold]{format_count(macs)}[/]")
        console.print(table)
    if params > limit:
        if not as_json:
            console.print(f"[red]over budget[/]: {params:,} > {limit:,} parameters")
        raise typer.Exit(1)
    if not as_json:
        console.print(f"[green]within budget[/]: {params:,} <= {limit:,} parameters")


# ---------------------------------------------------------------------------------------------
# Training


@command(
    teacher_app,
    name="train",
    epilog="Examples:\n\n  distill teacher train --arch resnet34 --data cifar10 --out t.pt\n\n"
    "  distill teacher train --arch resnet18-quarter --data ../shared/data/cifar10-jpeg "
    "--recipe quick --out runs/t.pt\n\n"
    "  torchrun --standalone --nproc_per_node 4 -m distill teacher train --arch resnet34 "
    "--data cifar10 --out t.pt",
)
@with_settings(data=DATA, recipe=RECIPE_FLAGS, run=RUN)
def teacher_train_cmd(
    flags: Flags,
    arch: str = arch_option("resnet34"),
    recipe: RecipeName = RECIPE,
    nproc_per_node: int = NPROC,
) -> None:
    """Train a teacher (any architecture) from labels. Teachers are not label-smoothed unless
    --label-smoothing says so: smoothing erases what distillation transfers."""
    from distill.recipes import FOR_TEACHERS, make_recipe
    from distill.supervised import train_on_labels

    relaunched(nproc_per_node)
    run = flags.build("run")
    resolved = make_recipe(recipe, **(FOR_TEACHERS | flags["recipe"]))
    run_training(
        lambda: train_on_labels(
            arch, flags.build("data"), resolved, run, console=_quiet_console(run)
        ),
        run.out,
    )


@command(
    name="student",
    epilog="Examples:\n\n"
    "  distill student --teacher t.pt --arch resnet18-5m --data cifar10 --out s.pt\n\n"
    "  distill student --teacher t1.pt --teacher t2.pt --kd dkd --out s.pt\n\n"
    "  distill student --teacher runs/t.pt --arch resnet18-quarter --recipe quick "
    "--temperature 2 --out runs/s.pt",
)
@with_settings(
    data=theirs("the teacher's", skip=("image_size",)),
    recipe=RECIPE_FLAGS,
    kd=KD,
    run=RUN,
)
def student_cmd(
    flags: Flags,
    teacher: list[Path] = typer.Option(
        ..., "--teacher", help="Teacher checkpoint; repeat for an ensemble (mean of logits)."
    ),
    arch: str = arch_option("resnet18-5m"),
    budget: str = typer.Option("5M", help="Parameter budget, checked before the first step."),
    recipe: RecipeName = RECIPE,
    nproc_per_node: int = NPROC,
) -> None:
    """Train a student on its teacher's soft targets, within a parameter budget.

    DKD (--kd dkd) decouples the target and non-target terms; with ten classes and short runs
    Hinton KD is the safer choice (README: What each choice is worth)."""
    from distill.checkpoint import load_checkpoint
    from distill.recipes import make_recipe
    from distill.settings import data_for_model
    from distill.student import train_student

    relaunched(nproc_per_node)
    run = flags.build("run")
    first = load_checkpoint(teacher[0])  # the split defaults to the teacher's own
    data = data_for_model(first.get("data") or {}, flags["data"], f"teacher {teacher[0]}")
    resolved = make_recipe(recipe, **flags["recipe"])
    limit = parse_budget(budget)
    run_training(
        lambda: train_student(
            arch,
            teacher,
            data,
            resolved,
            run,
            flags.build("kd"),
            limit,
            console=_quiet_console(run),
        ),
        run.out,
    )


@command(
    name="prune",
    epilog="Examples:\n\n"
    "  distill prune s.pt --budget 2.5M --teacher t.pt --out p.pt\n\n"
    "  distill prune t.pt --budget 5M --out p.pt   (a teacher cut to a student budget, "
    "distilled from its unpruned self)\n\n"
    "  distill prune runs/s.pt --budget 1.4M --recipe quick --epochs 3 --steps 2 "
    "--importance taylor --out runs/p.pt",
)
@with_settings(
    prune=Group(PruneSettings),
    data=theirs("MODEL's", skip=("image_size",)),
    recipe=Group(Recipe, skip=("epochs",), shown_default="the recipe's"),
    kd=KD,
    run=RUN,
)
def prune_cmd(
    flags: Flags,
    model: Path = typer.Argument(..., help="Checkpoint to prune (.pt)."),
    teacher: list[Path] = typer.Option(
        None,
        "--teacher",
        help="Teacher for KD while recovering; repeat for an ensemble. Without it the "
        "unpruned MODEL itself is the teacher.",
    ),
    recipe: RecipeName = RECIPE,
    nproc_per_node: int = NPROC,
) -> None:
    """Prune MODEL to a parameter budget (torch-pruning, global, round_to=8), distilling while
    it recovers."""
    from distill.checkpoint import load_checkpoint
    from distill.prune import prune_checkpoint
    from distill.recipes import make_recipe
    from distill.settings import data_for_model

    relaunched(nproc_per_node)
    prune = flags.build("prune")
    if not prune.budget:
        raise UserError("no --budget given; pass the pruned model's budget, e.g. --budget 2.5M")
    run = flags.build("run")
    src = load_checkpoint(model)
    data = data_for_model(src.get("data") or {}, flags["data"], str(model))
    ckpt = run_training(
        lambda: prune_checkpoint(
            model,
            prune,
            data=data,
            recipe=make_recipe(recipe, **flags["recipe"]),
            run=run,
            kd=flags.build("kd"),
            teacher_paths=teacher or [],
            console=_quiet_console(run),
        ),
        run.out,
    )
    r = ckpt["pruning"]
    console.print(
        f"pruned in {r['steps']} steps: {r['params_before']:,} -> {r['params_after']:,} params, "
        f"{format_count(r['macs_before'])} -> {format_count(r['macs_after'])} MACs; val top-1 "
        f"{r['val_accuracy_before']:.2%} before, {r['val_accuracy_pruned']:.2%} right after "
        f"pruning, {r['val_accuracy_after']:.2%} after recovery"
    )


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
    title = f"{model} on {result['source']} ({split}, {result['count']:,} images)"
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
        f"[bold]top-1 {result['accuracy']:.2%}[/]  top-5 {result['top5']:.2%}  "
        f"loss {result['loss']:.4f}"
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
    console.print(f"[green]wrote[/] {path} (plots in {path.parent / 'plots'})")


@command(
    name="predict",
    epilog="Examples:\n\n  distill predict runs/s.onnx cat.jpg dog.png\n\n"
    "  distill predict runs/s.int8.onnx photos/ --top-k 5 --json > predictions.json\n\n"
    "  distill predict runs/s.onnx photos/ --engine openvino",
)
def predict_cmd(
    model: Path = typer.Argument(..., help="An .onnx file written by distill export."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    top_k: int = typer.Option(3, "--top-k", help="Classes to show per image.", min=1),
    engine: Literal["onnxruntime", "ort", "openvino"] = typer.Option(
        "onnxruntime", help="onnxruntime (ort) or openvino (pip install 'distill[openvino]')."
    ),
    device: Literal["auto", "cpu", "cuda"] = typer.Option("cpu", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Classify images of any size and mode; class names and input size come from the file."""
    from export.cli import show_predictions
    from export.predict import predict

    show_predictions(predict(model, images, top_k, engine=engine, device=device), as_json)


@command(
    name="bench",
    epilog="Examples:\n\n  distill bench runs/s.onnx\n\n"
    "  distill bench runs/s.pt --batch-sizes 1,32,256 --threads 4 -o bench.json\n\n"
    "  distill bench runs/s.onnx --engines pytorch,onnxruntime,openvino --json\n\n"
    "  distill bench runs/s.onnx --device cuda",
)
@with_settings(bench=Group(BenchSettings))
def bench_cmd(
    flags: Flags,
    model: Path = typer.Argument(..., help="An exported .onnx or a checkpoint .pt."),
    checkpoint: Path = typer.Option(
        None, help="PyTorch baseline for an .onnx whose checkpoint is not beside it."
    ),
    int8: Path = typer.Option(None, "--int8", help="An int8 file that is not MODEL's sibling."),
    data: str = typer.Option(None, "--data", help="The model's data, when not where recorded."),
    data_root: Path = typer.Option(None, help="Where cifar10/cifar100 were downloaded."),
    cache_dir: Path = typer.Option(None, help="Decoded-data cache directory."),
    out: Path = typer.Option(None, "-o", "--out", help="Also write the full record here (.json)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Latency p50/p90/p99, images/s, accuracy and GFLOP/s of every engine and precision
    (PyTorch, onnxruntime, OpenVINO), measured in one run in alternating blocks."""
    from export.bench import benchmark
    from export.cli import show_bench
    from export.record import check_bench_output, write_bench_record
    from export.timing import Timing

    settings = flags.build("bench")
    if out is not None:
        check_bench_output(out, force)
    with console.status("benchmarking") as status:
        record = benchmark(
            model,
            settings.batch_sizes,
            settings.device,
            settings.threads,
            checkpoint=checkpoint,
            engines=list(settings.engines) or None,
            int8=int8,
            accuracy=settings.accuracy,
            data=data,
            data_root=data_root,
            cache_dir=cache_dir,
            timing=Timing(min_seconds=settings.seconds),
            progress=lambda msg: status.update(f"benchmarking: {msg}"),
        )
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        show_bench(record)
    if out is not None:
        write_bench_record(record, out, force)
        console.print(f"[green]wrote[/] {out}")


# ---------------------------------------------------------------------------------------------
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
    device: Literal["auto", "cpu", "cuda"] = typer.Option(None, help="auto, cpu or cuda."),
    data_root: Path = typer.Option(None, help="Where cifar10/cifar100 are downloaded."),
    cache_dir: Path = typer.Option(None, help="Decoded uint8 cache (never beside the data)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved stages and exit."),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the resolved settings as TOML and exit."
    ),
    force: bool = typer.Option(False, "--force", help="Use a non-empty --out that holds no run."),
    quiet: bool = typer.Option(False, "--quiet", help="Print nothing but errors and the result."),
    nproc_per_node: int = NPROC,
) -> None:
    """Teacher -> baseline -> KD student -> prune -> export -> bench -> report, resumable."""
    from distill.pipeline import describe, load_config, run_pipeline, to_toml
    from distill.resume import TrainingInterrupted

    flags_data = {"source": data, "data_root": data_root, "cache_dir": cache_dir}
    overrides: dict[str, Any] = {"data": {k: v for k, v in flags_data.items() if v is not None}}
    if device is not None:
        overrides["device"] = device
    settings = load_config(preset, config, overrides)
    if print_config:
        typer.echo(to_toml(settings), nl=False)
        return
    say = make_console(quiet)
    if dry_run:
        say.print(describe(settings))
        return
    if out is None:
        raise UserError("no run directory given; pass -o/--out DIR")
    relaunched(nproc_per_node)
    started = time.perf_counter()
    try:
        report = run_pipeline(settings, out, force=force, console=say, quiet=quiet)
    except TrainingInterrupted:
        if distributed.is_main():
            typer.echo(
                f"interrupted; rerun the same command to continue: {_resume_command()}", err=True
            )
        raise typer.Exit(130) from None
    minutes = (time.perf_counter() - started) / 60
    console.print(f"[bold green]pipeline finished[/] in {minutes:.1f} min; report: {report}")


# ---------------------------------------------------------------------------------------------


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that every `finally` (temp files, locks) runs."""


def _terminate(signum, frame):
    raise Terminated


def main() -> None:
    from distill.files import sweep_stale

    signal.signal(signal.SIGTERM, _terminate)
    sweep_stale()  # temp folders of distill processes that were killed with -9
    try:
        app()
    except Terminated:
        typer.echo("terminated: nothing half-written was left behind", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
