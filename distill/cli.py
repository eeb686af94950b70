"""The `distill` command line: thin typer commands over library functions a user could call too.

Every command validates its inputs before writing anything; a user's mistake (a UserError) is
printed as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from distill.budget import DEFAULT_BUDGET, format_count, parse_budget
from distill.errors import exits_on_user_error
from export.cli import app as export_app

app = typer.Typer(
    help="Distil and compress small-image classifiers under a hard parameter budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
teacher_app = typer.Typer(help="Train teacher models.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
# `distill export onnx`; the same sub-app runs as `python -m export` (export/__main__.py).
app.add_typer(export_app, name="export")
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


# Options shared by every command that loads data or trains. Reusing the OptionInfo objects
# keeps one definition (and one help text) per flag.
DATA = typer.Option(
    ...,
    "--data",
    help="cifar10, cifar100, a folder holding cifar-10-batches-py / cifar-100-python, "
    "or an image-folder root (train/<class>/*, optional test/<class>/*).",
)
DATA_ROOT = typer.Option(
    Path("~/.cache/distill").expanduser(), help="Where cifar10/cifar100 are downloaded."
)
CACHE_DIR = typer.Option(
    Path("~/.cache/distill").expanduser(), help="Decoded uint8 cache (never beside the data)."
)
VAL_SIZE = typer.Option(5000, help="Images held out for validation (seeded, stratified).")
TRAIN_SIZE = typer.Option(None, help="Stratified training subsample, for quick runs.")
SPLIT_SEED = typer.Option(0, help="Seed of the validation split; keep it fixed across stages.")
RECIPE = typer.Option("standard", help="Training recipe; see README for the list.")
EPOCHS = typer.Option(None, help="Override the recipe's epochs.")
BATCH_SIZE = typer.Option(None, help="Override the batch size (lr rescales unless --lr).")
LR = typer.Option(None, help="Override the peak learning rate.")
SEED = typer.Option(0, help="Seed of initialisation, order and augmentation.")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")
RESUME = typer.Option(False, help="Continue the interrupted run saved beside --out.")
FORCE = typer.Option(False, help="Overwrite an existing --out.")
QUIET = typer.Option(False, help="No progress display.")


def data_config(
    data: str,
    data_root: Path,
    cache_dir: Path,
    val_size: int,
    train_size: int | None,
    split_seed: int,
):
    from distill.data import DataConfig

    return DataConfig(
        source=data,
        data_root=data_root,
        cache_dir=cache_dir,
        val_size=val_size,
        train_size=train_size,
        seed=split_seed,
    )


def run_training(train: callable, out: Path, resume_hint: str) -> dict:
    """Run a training function; turn an interruption into a resume hint and exit code 130."""
    from distill.train import TrainingInterrupted

    try:
        ckpt = train()
    except TrainingInterrupted as e:
        typer.echo(
            f"interrupted: state saved to {e.path}; continue with: {resume_hint} --resume", err=True
        )
        raise typer.Exit(130) from None
    m = ckpt["metrics"]
    test = f", test top-1 {m['test_accuracy']:.2%}" if "test_accuracy" in m else ""
    console.print(
        f"[green]saved[/] {out}: {ckpt['arch']}, {m['params']:,} params, "
        f"val top-1 {m['val_accuracy']:.2%}{test}"
    )
    return ckpt


@command(
    teacher_app,
    name="train",
    epilog="Examples:\n\n  distill teacher train --arch resnet34 --data cifar10 --out t.pt\n\n"
    "  distill teacher train --arch resnet18-quarter --data ../shared/data/cifar10-jpeg "
    "--recipe quick --out runs/t.pt",
)
def teacher_train_cmd(
    arch: str = typer.Option("resnet34", help="Registered architecture (distill models)."),
    data: str = DATA,
    out: Path = typer.Option(..., help="Checkpoint to write (.pt)."),
    recipe: str = RECIPE,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    seed: int = SEED,
    val_size: int = VAL_SIZE,
    train_size: int = TRAIN_SIZE,
    split_seed: int = SPLIT_SEED,
    data_root: Path = DATA_ROOT,
    cache_dir: Path = CACHE_DIR,
    device: str = DEVICE,
    resume: bool = RESUME,
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Train a teacher (any registered architecture) from labels."""
    from distill.recipes import resolve_recipe
    from distill.teacher import check_run_inputs, train_teacher
    from distill.train import RunConfig

    resolved = resolve_recipe(recipe, epochs=epochs, batch_size=batch_size, lr=lr)
    run = RunConfig("teacher", arch, out, device, seed, resume, force, not quiet)
    check_run_inputs(arch, run)
    cfg = data_config(data, data_root, cache_dir, val_size, train_size, split_seed)
    run_training(
        lambda: train_teacher(arch, cfg, resolved, run, console=console),
        out,
        # The exact command as typed: every flag must match for the resume checks to pass.
        shlex.join(["distill", *(a for a in sys.argv[1:] if a != "--resume")]),
    )


@command(
    name="student",
    epilog="Examples:\n\n"
    "  distill student --teacher t.pt --arch resnet18-5m --data cifar10 --out s.pt\n\n"
    "  distill student --teacher t1.pt --teacher t2.pt --kd dkd --data cifar10 --out s.pt\n\n"
    "  distill student --teacher runs/t.pt --arch resnet18-quarter "
    "--data ../shared/data/cifar10-jpeg --recipe quick --temperature 2 --out runs/s.pt",
)
def student_cmd(
    teacher: list[Path] = typer.Option(
        ..., "--teacher", help="Teacher checkpoint; repeat for an ensemble (mean of logits)."
    ),
    arch: str = typer.Option("resnet18-5m", help="Student architecture (distill models)."),
    data: str = DATA,
    out: Path = typer.Option(..., help="Checkpoint to write (.pt)."),
    budget: str = typer.Option("5M", help="Parameter budget, checked before the first step."),
    kd: str = typer.Option("hinton", "--kd", help="hinton or dkd (decoupled KD)."),
    alpha: float = typer.Option(
        None, help="hinton: soft-target weight (default 0.9); dkd: TCKD weight (default 1)."
    ),
    temperature: float = typer.Option(None, help="Softmax temperature T (default 4)."),
    beta: float = typer.Option(None, help="dkd: NCKD weight (default 8)."),
    warmup: float = typer.Option(
        None, help="Epochs over which the KD term ramps up (dkd default: 1/12 of the run)."
    ),
    recipe: str = RECIPE,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    seed: int = SEED,
    val_size: int = typer.Option(None, help="Default: the teacher's (explicit values must match)."),
    train_size: int = TRAIN_SIZE,
    split_seed: int = typer.Option(None, help="Default: the teacher's (explicit must match)."),
    data_root: Path = DATA_ROOT,
    cache_dir: Path = CACHE_DIR,
    device: str = DEVICE,
    resume: bool = RESUME,
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Train a student on its teacher's soft targets, within a parameter budget."""
    from distill.losses import KDConfig
    from distill.recipes import resolve_recipe
    from distill.student import read_teachers, resolve_split, train_student
    from distill.teacher import check_run_inputs
    from distill.train import RunConfig

    resolved = resolve_recipe(recipe, epochs=epochs, batch_size=batch_size, lr=lr)
    run = RunConfig("student", arch, out, device, seed, resume, force, not quiet)
    check_run_inputs(arch, run)
    limit = parse_budget(budget)
    kd_config = KDConfig.create(
        kd,
        alpha=alpha,
        temperature=temperature,
        beta=beta,
        warmup_epochs=warmup,
        epochs=resolved.epochs,
    )
    val_size, split_seed = resolve_split(read_teachers(teacher), val_size, split_seed)
    cfg = data_config(data, data_root, cache_dir, val_size, train_size, split_seed)
    # The resume hint repeats every setting that changes the run, or the resume is refused.
    given = {
        "teacher": teacher,
        "arch": [arch],
        "data": [data],
        "out": [out],
        "recipe": [recipe],
        "kd": [kd],
        "alpha": [alpha],
        "temperature": [temperature],
        "beta": [beta],
        "warmup": [warmup],
        "epochs": [epochs],
        "batch-size": [batch_size],
        "lr": [lr],
        "train-size": [train_size],
        "seed": [seed],
        "budget": [budget],
        "cache-dir": [cache_dir],
        "device": [device],
    }
    hint = " ".join(f"--{k} {v}" for k, vs in given.items() for v in vs if v is not None)
    run_training(
        lambda: train_student(arch, teacher, cfg, resolved, run, kd_config, limit, console=console),
        out,
        f"distill student {hint}",
    )


@command(
    name="eval",
    epilog="Examples:\n\n  distill eval runs/s.pt --data cifar10\n\n"
    "  distill eval runs/s.onnx --data ../shared/data/cifar10-jpeg --split val",
)
def eval_cmd(
    model: Path = typer.Argument(..., help="A checkpoint .pt or an exported .onnx."),
    data: str = typer.Option(
        None, "--data", help="Data to evaluate on; default: the source the model was trained on."
    ),
    split: str = typer.Option("val", help="val or test."),
    val_size: int = typer.Option(None, help="Default: the model's own validation size."),
    split_seed: int = typer.Option(None, help="Default: the model's own split seed."),
    data_root: Path = DATA_ROOT,
    cache_dir: Path = CACHE_DIR,
    device: str = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Top-1, per-class accuracy and confusion matrix of a model on a data split."""
    from distill.evaluation import evaluate_file

    result = evaluate_file(
        model,
        data=data,
        split=split,
        val_size=val_size,
        split_seed=split_seed,
        data_root=data_root,
        cache_dir=cache_dir,
        device=device,
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"{model} on {result['source']} ({split}, {result['count']:,} images)")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name, acc in zip(result["classes"], result["per_class"], strict=True):
        table.add_row(name, f"{acc:.2%}")
    console.print(table)
    conf = Table(title="confusion (rows: true, columns: predicted)")
    conf.add_column("")
    for i in range(len(result["classes"])):
        conf.add_column(str(i), justify="right")
    for i, (name, row) in enumerate(zip(result["classes"], result["confusion"], strict=True)):
        conf.add_row(f"{i} {name}", *(str(v) for v in row))
    if len(result["classes"]) <= 20:
        console.print(conf)
    console.print(f"[bold]top-1 {result['accuracy']:.2%}[/]  loss {result['loss']:.4f}")


@command(
    name="report",
    epilog="Examples:\n\n  distill report runs/demo\n\n"
    "  distill report my-models/   (any folder of distill .pt / .onnx files)",
)
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A pipeline run folder, or any folder of models."),
) -> None:
    """Markdown report with PNG plots: table, KD gain, curves, accuracy vs params and latency."""
    from distill.report import write_report

    path = write_report(run_dir)
    console.print(f"[green]wrote[/] {path} (plots in {path.parent / 'plots'})")


@command(
    name="prune",
    epilog="Examples:\n\n"
    "  distill prune s.pt --budget 2.5M --teacher t.pt --out p.pt\n\n"
    "  distill prune t.pt --budget 5M --out p.pt   (a teacher cut to a student budget, "
    "distilled from its unpruned self)\n\n"
    "  distill prune runs/s.pt --budget 1.4M --recipe quick --epochs 3 --steps 2 "
    "--importance taylor --out runs/p.pt",
)
def prune_cmd(
    model: Path = typer.Argument(..., help="Checkpoint to prune (.pt)."),
    budget: str = typer.Option(..., help="Parameter budget of the result, e.g. 2.5M or 800k."),
    out: Path = typer.Option(..., help="Checkpoint to write (.pt)."),
    teacher: list[Path] = typer.Option(
        None,
        "--teacher",
        help="Teacher for KD while recovering; repeat for an ensemble. Without it the "
        "unpruned MODEL itself is the teacher.",
    ),
    data: str = typer.Option(None, "--data", help="Default: the data MODEL was trained on."),
    importance: str = typer.Option(
        "magnitude", help="magnitude (group L2 norm) or taylor (|w x grad| over 8 batches)."
    ),
    steps: int = typer.Option(3, help="Pruning steps, geometric towards the budget."),
    epochs_per_step: int = typer.Option(1, help="KD fine-tuning epochs between steps (0: none)."),
    kd: str = typer.Option("hinton", "--kd", help="hinton or dkd (decoupled KD)."),
    alpha: float = typer.Option(None, help="KD weight (hinton default 0.9, dkd 1)."),
    temperature: float = typer.Option(None, help="Softmax temperature T (default 4)."),
    recipe: str = RECIPE,
    epochs: int = typer.Option(None, help="Recovery epochs after the last step (the recipe's)."),
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    seed: int = SEED,
    val_size: int = typer.Option(None, help="Default: MODEL's (explicit values must match)."),
    train_size: int = TRAIN_SIZE,
    split_seed: int = typer.Option(None, help="Default: MODEL's (explicit values must match)."),
    data_root: Path = DATA_ROOT,
    cache_dir: Path = CACHE_DIR,
    device: str = DEVICE,
    resume: bool = RESUME,
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Prune MODEL to a parameter budget (torch-pruning, global, round_to=8), distilling while
    it recovers."""
    from distill.losses import KDConfig
    from distill.prune import prune_checkpoint, prune_data_config
    from distill.recipes import resolve_recipe
    from distill.train import RunConfig, TrainingInterrupted

    resolved = resolve_recipe(recipe, epochs=epochs, batch_size=batch_size, lr=lr)
    kd_config = KDConfig.create(kd, alpha=alpha, temperature=temperature, epochs=resolved.epochs)
    cfg = prune_data_config(
        model,
        data,
        val_size=val_size,
        split_seed=split_seed,
        train_size=train_size,
        data_root=data_root,
        cache_dir=cache_dir,
    )
    run = RunConfig("pruned", "", out, device, seed, resume, force, not quiet)

    def prune():
        try:
            return prune_checkpoint(
                model,
                budget,
                teacher_paths=teacher or [],
                data=cfg,
                recipe=resolved,
                run=run,
                importance=importance,
                steps=steps,
                epochs_per_step=epochs_per_step,
                kd=kd_config,
                console=console,
            )
        except TrainingInterrupted as e:
            if e.path is not None:  # the recovery phase: resumable
                raise
            typer.echo("interrupted while pruning: nothing saved; run the command again", err=True)
            raise typer.Exit(130) from None

    flags = {"budget": budget, "out": out, "data": data, "recipe": recipe, "epochs": epochs}
    flags |= {"batch-size": batch_size, "lr": lr, "seed": seed, "train-size": train_size}
    flags |= {"kd": kd, "alpha": alpha, "temperature": temperature}
    hint = " ".join(f"--{k} {v}" for k, v in flags.items() if v is not None)
    hint += "".join(f" --teacher {t}" for t in teacher or [])
    ckpt = run_training(prune, out, f"distill prune {model} {hint}")
    r = ckpt["pruning"]
    console.print(
        f"pruned in {r['steps']} steps: {r['params_before']:,} -> {r['params_after']:,} params, "
        f"{format_count(r['macs_before'])} -> {format_count(r['macs_after'])} MACs; val top-1 "
        f"{r['val_accuracy_before']:.2%} before, {r['val_accuracy_pruned']:.2%} right after "
        f"pruning, {r['val_accuracy_after']:.2%} after recovery"
    )


@command(
    name="predict",
    epilog="Examples:\n\n  distill predict runs/s.onnx cat.jpg dog.png\n\n"
    "  distill predict runs/s.int8.onnx photos/ --top-k 5 --json > predictions.json",
)
def predict_cmd(
    model: Path = typer.Argument(..., help="An .onnx file written by distill export."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    top_k: int = typer.Option(3, "--top-k", help="Classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """Classify images of any size and mode with onnxruntime; class names come from the file."""
    from export.cli import show_predictions
    from export.predict import predict

    show_predictions(predict(model, images, top_k), as_json)


@command(
    name="bench",
    epilog="Examples:\n\n  distill bench runs/s.onnx\n\n"
    "  distill bench runs/s.pt --batch-sizes 1,32,256 --threads 4 --json bench.json\n\n"
    "  distill bench runs/s.onnx --device cuda",
)
def bench_cmd(
    model: Path = typer.Argument(..., help="An exported .onnx or a checkpoint .pt."),
    batch_sizes: str = typer.Option("1,32,256", help="Comma-separated batch sizes."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int = typer.Option(None, help="Threads for both engines (default: physical cores)."),
    checkpoint: Path = typer.Option(
        None, help="PyTorch baseline for an .onnx whose checkpoint is not beside it."
    ),
    seconds: float = typer.Option(
        2.0, help="Timed seconds per engine and batch size, at least (more: steadier p99)."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the full record here."),
) -> None:
    """Latency p50/p90/p99 and images/s: onnxruntime vs PyTorch eager, measured in one run."""
    from distill.errors import UserError
    from export.bench import Timing, benchmark, parse_batch_sizes
    from export.cli import show_bench

    sizes = parse_batch_sizes(batch_sizes)
    if json_out is not None and json_out.is_dir():
        raise UserError(f"--json {json_out} is a directory; pass a file path")
    with console.status("benchmarking") as status:
        record = benchmark(
            model,
            sizes,
            device,
            threads,
            checkpoint=checkpoint,
            timing=Timing(min_seconds=seconds),
            progress=lambda msg: status.update(f"benchmarking: {msg}"),
        )
    show_bench(record)
    if json_out is not None:
        json_out.write_text(json.dumps(record, indent=2) + "\n")
        console.print(f"[green]wrote[/] {json_out}")


@command(
    name="pipeline",
    epilog="Examples:\n\n  distill pipeline --data ../shared/data/cifar10-jpeg --preset quick "
    "--out runs/demo\n\n  distill pipeline --data cifar10 --preset standard --out runs/std\n\n"
    "  distill pipeline --data cifar10 --preset standard --config my.toml --out runs/mine\n\n"
    "Rerunning the same command skips finished stages, redoes changed ones and resumes an "
    "interrupted one.",
)
def pipeline_cmd(
    data: str = typer.Option(None, "--data", help=DATA.help),
    preset: str = typer.Option("quick", help="quick (CPU demo) or standard (GPU)."),
    config: Path = typer.Option(
        None, "--config", help="TOML overriding the preset: [teacher] [student] [kd] [prune] ..."
    ),
    out: Path = typer.Option(..., help="Run directory (created; reused on reruns)."),
    device: str = DEVICE,
    data_root: Path = typer.Option(None, help=DATA_ROOT.help),
    cache_dir: Path = typer.Option(None, help=CACHE_DIR.help),
    dry_run: bool = typer.Option(False, help="Print the resolved stages and exit."),
    force: bool = typer.Option(False, help="Use a non-empty --out that holds no pipeline."),
    quiet: bool = QUIET,
) -> None:
    """Teacher -> baseline -> KD student -> prune -> export -> bench -> report, resumable."""
    from distill.pipeline import describe, load_config, run_pipeline
    from distill.train import TrainingInterrupted

    cfg = load_config(
        preset,
        data,
        config,
        device=None if device == "auto" else device,
        data_root=str(data_root) if data_root else None,
        cache_dir=str(cache_dir) if cache_dir else None,
    )
    console.print(describe(cfg))
    if dry_run:
        return
    started = time.perf_counter()
    try:
        report = run_pipeline(cfg, out, force=force, console=console, show_progress=not quiet)
    except TrainingInterrupted:
        typer.echo(
            "interrupted; rerun the same command to continue from where it stopped", err=True
        )
        raise typer.Exit(130) from None
    minutes = (time.perf_counter() - started) / 60
    console.print(f"[bold green]pipeline finished[/] in {minutes:.1f} min; report: {report}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
