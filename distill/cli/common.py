"""What every `distill` command shares: the typer app, the `@command` decorator (a UserError is
one line and exit 2), the flags several commands take, and how a training command relaunches
itself under torchrun, reports an interruption and prints its result."""

from __future__ import annotations

import contextlib
import inspect
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import typer
import typer.core

from distill import __version__, distributed
from distill.cli.errors import exits_on_user_error, one_line_usage_errors
from distill.console import make_console, styled
from distill.flags import Flags, Group
from distill.recipes import RECIPES
from distill.settings import (
    DataSettings,
    KDSettings,
    Recipe,
    RunSettings,
)


def _export_app() -> typer.Typer:
    from distill.cli.export_cmd import app as export_app

    return export_app


def _version(value: bool) -> None:
    if value:
        typer.echo(f"distill {__version__}")
        raise typer.Exit()


# `distill --help` lists the commands in the order a user runs them, not registration order.
WORKFLOW = (
    "teacher", "student", "prune", "export", "predict", "eval", "bench", "compare", "report",
    "pipeline", "models", "budget",
)  # fmt: skip


class _WorkflowOrder(typer.core.TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))


def one_help_style() -> None:
    """Every --help shows defaults and switches one way, on every command and sub-app.

    typer writes a default given as a description in parentheses (`[default: (the recipe's)]`)
    and a concrete one without (`[default: 5M]`); here both read `[default: VALUE]`. It also
    shows a switch's type (`--tta <bool>`, `--help <bool>`) though a switch takes no value;
    here a switch shows none. typer draws both through these two functions, replaced here.
    """
    plain_default = typer.core._get_default_string
    value_type = typer.core.TyperOption.display_type_rich

    def default_string(obj, *, ctx, show_default_is_str, default_value):
        if show_default_is_str:
            return str(obj.show_default)
        return plain_default(obj, ctx=ctx, show_default_is_str=False, default_value=default_value)

    def switch_without_type(self, ctx):
        return None if self.is_flag else value_type(self, ctx)

    typer.core._get_default_string = default_string
    typer.core.TyperOption.display_type_rich = switch_without_type


one_line_usage_errors()
one_help_style()
app = typer.Typer(
    cls=_WorkflowOrder,
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


teacher_app = typer.Typer(
    help="Train a teacher, or import a pretrained torchvision/timm one.", no_args_is_help=True
)
app.add_typer(teacher_app, name="teacher")
# `distill export onnx`; the same sub-app runs as `python -m export` (export/__main__.py).
app.add_typer(_export_app(), name="export")
console = make_console()


def command(group: typer.Typer = app, name: str | None = None, more_help: str = "", **kwargs: Any):
    """`@command()` registers a CLI command whose UserErrors exit 2 with one line; `more_help`
    is appended to the docstring's help (paragraphs generated from settings)."""

    def deco(fn):
        kwargs.setdefault("help", (_paragraphs(fn.__doc__) or "") + more_help)
        return group.command(name, **kwargs)(exits_on_user_error(fn))

    return deco


def _paragraphs(doc: str | None) -> str | None:
    """A docstring as --help should show it. With rich markup typer keeps every single line
    break after the first paragraph, and docstrings wrap at 100 columns: join each paragraph's
    lines so the help text flows to the terminal's width."""
    if not doc:
        return None
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


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


def stem_option() -> Any:
    from distill.stems import STEM_HELP

    return typer.Option("auto", help=STEM_HELP)


StemName = Literal["auto", "cifar", "imagenet"]
NPROC = typer.Option(
    1,
    "--nproc-per-node",
    help="Train with this many processes on this machine (one per GPU), relaunched under "
    "torchrun; the global batch is --batch-size x processes and the lr follows it.",
    min=1,
)
DATA = Group(DataSettings)
RUN = Group(RunSettings)
RECIPE_FLAGS = Group(Recipe, shown_default="the recipe's")
KD = Group(KDSettings)
# Students, pruning and evaluation default to the data and split their model was validated on.
THEIRS = {
    "val_size": "Images held out for validation; an explicit value must match the model's.",
    "split_seed": "Seed of the validation split; an explicit value must match the model's.",
}
THEIRS_TOO = ("source", "val_size", "split_seed", "image_size")


def theirs(whose: str, **kwargs: Any) -> Group:
    return Group(
        DataSettings,
        help=THEIRS,
        defaults={k: whose for k in THEIRS_TOO},
        **kwargs,
    )


def resume_command() -> str:
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


def relaunched(nproc: int, device: str = "auto", check: Callable[[], Any] = lambda: None) -> bool:
    """Relaunch this very command under torchrun when --nproc-per-node asks for more than one
    process; the parent then only waits and exits with the children's code. Before any process
    starts: more processes than GPUs (or far more than cores) is refused, more processes or
    threads than cores is said, and `check()` (the command's own cheap checks) runs."""
    from distill import launch

    if nproc <= 1 or distributed.launched():
        return False
    launch.check_nproc(nproc, device, warn=lambda line: typer.echo(line, err=True))
    check()
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
    os.environ["DISTILL_COMMAND"] = resume_command()
    # The launcher's rendezvous store keeps C++ threads in this process: leave without their
    # destructors.
    distributed.exit_now(distributed.relaunch(nproc, argv))


@contextlib.contextmanager
def training_command() -> Iterator[None]:
    """Around a training call: an interruption becomes the command that resumes it (exit 130),
    a full disk says how to continue once there is room (exit 2)."""
    from distill.resume import TrainingInterrupted
    from distill.train import OutputNotWritten

    try:
        yield
    except OutputNotWritten as e:
        if distributed.is_main():
            way = (
                f"continue from {e.resume_from} with: {resume_command()} --resume"
                if e.resume_from
                else "no resumable state was written yet: run the command again"
            )
            typer.echo(f"error: {e}; once there is room, {way}", err=True)
        raise typer.Exit(2) from None
    except TrainingInterrupted as e:
        if distributed.is_main():
            typer.echo(
                f"interrupted: state saved to {e.path}; continue with: {resume_command()} --resume",
                err=True,
            )
        raise typer.Exit(130) from None


def print_saved(ckpt: dict[str, Any], out: Path | None) -> None:
    """The result line, and a loud warning after it when the run learned nothing."""
    from distill.progress import failure_warning

    m = ckpt["metrics"]
    test = f", test top-1 {m['test_accuracy']:.2%}" if "test_accuracy" in m else ""
    console.print(
        styled("saved", "green"),
        f"{out}: {ckpt['arch']}, {m['params']:,} params, "
        f"val top-1 {m['val_accuracy']:.2%} (top-5 {m.get('val_top5', float('nan')):.2%}){test}",
    )
    warning = failure_warning(ckpt)
    if warning:
        console.print(warning, style="bold red")


def run_settings(flags: Flags, name: str) -> RunSettings:
    """A training command's run settings, refused before any work when they cannot be met.
    Without --out the checkpoint goes to a new numbered folder, `runs/NAME`, `runs/NAME2`, ..."""
    from dataclasses import replace

    from distill.progress import check_tensorboard
    from distill.run_folders import next_run

    run = flags.build("run")
    if run.out is None:  # the library trains in memory then; a command saves a numbered run
        run = replace(run, out=next_run(name))
        if distributed.is_main():
            console.print(f"no --out given: writing {run.out}")
    if run.tensorboard is not None:
        check_tensorboard()  # before the data is decoded and the output locked
    if run.mlflow is not None:
        from distill.tracking import check_mlflow

        check_mlflow()
    return run


def start_run(
    flags: Flags,
    name: str,
    nproc: int,
    *,
    arch: str | None = None,
    recipe: str | None = None,
    kind: str = "student",
) -> RunSettings:
    """How every training command starts: its run settings, then, when --nproc-per-node asks
    for several processes, what the ranks would refuse at once (the output, `arch`, `recipe`
    on this device) checked here, and this command relaunched under torchrun."""
    from distill.api import check_launch

    run = run_settings(flags, name)
    relaunched(
        nproc,
        run.device,
        lambda: check_launch(arch, recipe, run, nproc, kind=kind, **flags["recipe"]),
    )
    return run


def quiet_console(run: RunSettings):
    return make_console(run.quiet)
