"""`distill teacher train`, `student` and `prune`: the training commands."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.budget import format_count, parse_budget
from distill.cli.common import (
    DATA,
    KD,
    NPROC,
    RECIPE,
    RECIPE_FLAGS,
    RUN,
    RecipeName,
    arch_option,
    command,
    console,
    quiet_console,
    relaunched,
    run_settings,
    run_training,
    teacher_app,
    theirs,
)
from distill.errors import UserError
from distill.flags import Flags, Group, with_settings
from distill.settings import PruneSettings, Recipe

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
    """Train a teacher (any architecture) from labels, label-smoothed as its recipe says for
    teachers unless --label-smoothing is given: `standard` not at all (over long runs smoothing
    erases what distillation transfers), `quick` 0.1 (measured better for short runs)."""
    from distill.recipes import teacher_recipe
    from distill.supervised import train_on_labels

    relaunched(nproc_per_node)
    run = run_settings(flags)
    resolved = teacher_recipe(recipe, **flags["recipe"])
    run_training(
        lambda: train_on_labels(
            arch, flags.build("data"), resolved, run, console=quiet_console(run)
        ),
        run.out,
    )


def _kd_methods_help() -> str:
    """One paragraph per distillation method, for the student command's --help."""
    from distill.settings import KD_METHOD_HELP

    lines = "".join(f"\n\n--kd {k}: {v}." for k, v in KD_METHOD_HELP.items())
    return lines + (
        "\n\nFeature methods (crd, fitnet, at, reviewkd) learn from one teacher; the logit "
        "methods (hinton, dkd, dist, mlkd) take an ensemble and --logit-standardize."
    )


@command(
    name="student",
    more_help=_kd_methods_help(),
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

    DKD (--kd dkd) decouples the target and non-target terms. Its defaults scale beta to the
    number of classes and warm up over at least an epoch; with them, on ten classes and a short
    CPU run, DKD matched Hinton KD from the same teacher but did not beat it, so Hinton stays the
    default (README: What each choice is worth)."""
    from distill.checkpoint import load_checkpoint
    from distill.recipes import make_recipe
    from distill.settings import data_for_model
    from distill.student import train_student

    relaunched(nproc_per_node)
    run = run_settings(flags)
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
            console=quiet_console(run),
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
    from distill.pruning import prune_checkpoint
    from distill.recipes import make_recipe
    from distill.settings import data_for_model

    relaunched(nproc_per_node)
    prune = flags.build("prune")
    if not prune.budget:
        raise UserError("no --budget given; pass the pruned model's budget, e.g. --budget 2.5M")
    run = run_settings(flags)
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
            console=quiet_console(run),
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
