"""`distill teacher train`, `student` and `prune`: the training commands."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.budget import format_count
from distill.cli.common import (
    DATA,
    KD,
    NPROC,
    RECIPE,
    RECIPE_FLAGS,
    RUN,
    RecipeName,
    StemName,
    arch_option,
    command,
    console,
    print_saved,
    quiet_console,
    start_run,
    stem_option,
    teacher_app,
    theirs,
    training_command,
)
from distill.errors import UserError
from distill.flags import Flags, Group, with_settings
from distill.progress import plural
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
    stem: StemName = stem_option(),
    recipe: RecipeName = RECIPE,
    nproc_per_node: int = NPROC,
) -> None:
    """Train a teacher (any architecture) from labels, label-smoothed as its recipe says for
    teachers unless --label-smoothing is given: `standard` not at all (over long runs smoothing
    erases what distillation transfers), `quick` 0.1 (measured better for short runs)."""
    from distill.timing import phase

    with phase("imports: torch and training"):
        from distill.api import train_teacher

    run = start_run(flags, "teacher", nproc_per_node, arch=arch, recipe=recipe, kind="teacher")
    with training_command():
        ckpt = train_teacher(
            arch,
            flags.build("data"),
            recipe=recipe,
            run=run,
            console=quiet_console(run),
            stem=stem,
            **flags["recipe"],
        )
    print_saved(ckpt, run.out)


@command(
    teacher_app,
    name="import",
    epilog="Examples:\n\n"
    "  distill teacher import torchvision:resnet50 --weights resnet50.pth --data D "
    "--image-size 96 --out t.pt\n\n"
    "  distill teacher import timm:convnext_nano --weights model.safetensors --data D "
    "--epochs 2 --out t.pt",
)
@with_settings(data=DATA, recipe=RECIPE_FLAGS, run=RUN)
def teacher_import_cmd(
    flags: Flags,
    architecture: str = typer.Argument(
        ..., help="torchvision:NAME or timm:NAME (timm: pip install 'distill\\[timm]')."
    ),
    weights: Path = typer.Option(
        ..., help="The model's state dict (.pth, .pt or .safetensors); nothing is downloaded."
    ),
    recipe: RecipeName = typer.Option("finetune", help="Named training recipe (README: Recipes)."),
    nproc_per_node: int = NPROC,
) -> None:
    """Import a pretrained torchvision or timm model as a teacher: its classifier replaced for
    the data's classes, fine-tuned on the data (the finetune recipe: lr 0.01, 5 epochs), written
    as a distill teacher checkpoint with the data's normalisation. Students of any architecture
    then learn from it, at its input size or their own."""
    from distill.api import import_teacher

    run = start_run(flags, "teacher", nproc_per_node, recipe=recipe, kind="teacher")
    with training_command():
        ckpt = import_teacher(
            architecture,
            weights,
            flags.build("data"),
            recipe=recipe,
            run=run,
            console=quiet_console(run),
            **flags["recipe"],
        )
    print_saved(ckpt, run.out)


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
    data=theirs("the teacher's"),
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
    stem: StemName = stem_option(),
    budget: str = typer.Option("5M", help="Parameter budget, checked before the first step."),
    recipe: RecipeName = RECIPE,
    nproc_per_node: int = NPROC,
) -> None:
    """Train a student on its teacher's soft targets, within a parameter budget.

    DKD (--kd dkd) decouples the target and non-target terms. Its defaults scale beta to the
    number of classes and warm up over at least an epoch; with them, on ten classes and a short
    CPU run, DKD matched Hinton KD from the same teacher but did not beat it, so Hinton stays the
    default (README: What each choice is worth)."""
    from distill.api import train_student

    run = start_run(flags, "student", nproc_per_node, arch=arch, recipe=recipe)
    data = flags["data"]  # what was typed; the rest is the teacher's data and split
    with training_command():
        ckpt = train_student(
            teacher,
            arch,
            data.pop("source", None),
            budget=budget,
            kd=flags.build("kd"),
            recipe=recipe,
            run=run,
            console=quiet_console(run),
            **flags["recipe"],
            stem=stem,
            **data,
        )
    print_saved(ckpt, run.out)


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
    data=theirs("MODEL's"),
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
    recipe: RecipeName | None = typer.Option(
        None,
        help="Named recipe of the recovery (README: Recipes).",
        show_default="MODEL's own, as it recorded",
    ),
    nproc_per_node: int = NPROC,
) -> None:
    """Prune MODEL to a parameter budget (torch-pruning, global, channels kept in multiples of
    --round-to), distilling while it recovers.

    The recovery continues with MODEL's own recipe, training subsample and image size unless
    flags say otherwise."""
    from distill.api import prune

    settings = flags.build("prune")
    if not settings.budget:
        raise UserError("no --budget given; pass the pruned model's budget, e.g. --budget 2.5M")
    run = start_run(flags, "pruned", nproc_per_node, recipe=recipe)
    data = flags["data"]  # what was typed; the rest is MODEL's data and split
    with training_command():
        ckpt = prune(
            model,
            settings,
            teacher=teacher or None,
            data=data.pop("source", None),
            kd=flags.build("kd"),
            recipe=recipe,
            run=run,
            console=quiet_console(run),
            **flags["recipe"],
            **data,
        )
    print_saved(ckpt, run.out)
    r = ckpt["pruning"]
    console.print(
        f"pruned in {plural(r['steps'], 'step')}: {r['params_before']:,} -> "
        f"{r['params_after']:,} params, "
        f"{format_count(r['macs_before'])} -> {format_count(r['macs_after'])} MACs; val top-1 "
        f"{r['val_accuracy_before']:.2%} before, {r['val_accuracy_pruned']:.2%} right after "
        f"pruning, {r['val_accuracy_after']:.2%} after recovery"
    )
