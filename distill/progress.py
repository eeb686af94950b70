"""What a run reports as it goes: the plan line before the first step, a progress bar per epoch,
one line per epoch, and the per-epoch metrics beside each training output: `NAME.metrics.csv`
(one row per epoch, rewritten atomically after each, like timm's summary.csv) and, when asked,
TensorBoard."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from distill import distributed
from distill.console import styled
from distill.errors import UserError

if TYPE_CHECKING:
    from distill.data import Dataset
    from distill.resume import State
    from distill.settings import Recipe, RunSettings
    from distill.train_setup import Sums, Trainer
from distill.files import atomic_write_text

# A GPU-sized run on a CPU: more image passes than this, or more forward MACs over the run than
# CPU_WARN_MACS, gets one warning line before it starts. The demo's teacher (resnet18-quarter,
# 35M MACs, 12 epochs of 45,000 images) is 1.9e13 and trains in minutes on 2 cores; resnet34
# for 4 such epochs is 2.1e14, hours.
CPU_WARN_IMAGE_PASSES = 3_000_000
CPU_WARN_MACS = 5e13
# Fewer optimizer steps than this in a whole run teach a network from scratch next to nothing
# (a 1,000-image run at the standard recipe's batch of 512 is 2 steps an epoch): say so.
FEW_STEPS = 50

COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "images_per_s",
    "seconds",
)


def metrics_path(out: Path) -> Path:
    """s.pt -> s.metrics.csv"""
    return out.with_name(out.stem + ".metrics.csv")


def check_tensorboard() -> None:
    """Refuse --tensorboard before any work when the optional extra is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install 'distill[tensorboard]'"
        ) from None


class MetricsLog:
    def __init__(self, out: Path, tensorboard: Path | None = None, tracker: Any = None) -> None:
        self.csv = metrics_path(out)
        self.tracker = tracker  # distill.tracking.Tracker, or None
        self.writer = None
        if tensorboard is not None:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard))
        self._logged = 0  # epochs already sent to TensorBoard

    def write(self, history: list[dict[str, Any]]) -> None:
        """The whole history so far (a resumed run rewrites its earlier epochs, never twice)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.csv, buf.getvalue())
        if self.tracker is not None:
            self.tracker.epochs(history)
        if self.writer is not None:
            for row in history[self._logged :]:
                for key in COLUMNS[1:]:
                    # train_loss -> train/loss: TensorBoard groups the curves by prefix
                    tag = key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key
                    self.writer.add_scalar(tag, row[key], row["epoch"])
            self.writer.flush()
            self._logged = len(history)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}", markup=False),
        TimeRemainingColumn(),
        console=console,
        # A bar is for a terminal: in a log file or a pipe it would only leave blank lines.
        disable=console.quiet or not console.is_terminal,
        transient=True,
    )


def stats_text(sums: Sums, seen_before: int, t_epoch: float, kd: bool = False) -> str:
    rate = (sums.seen - seen_before) * distributed.world_size() / (time.perf_counter() - t_epoch)
    return (
        f"{'objective' if kd else 'loss'} {float(sums.loss) / sums.seen:.3f}  "
        f"acc {float(sums.correct) / sums.seen:6.1%}  {rate:,.0f} img/s"
    )


def epoch_line(r: dict[str, Any], epochs: int, kd: bool = False) -> str:
    """`kd`: the training loss is the distillation objective, not a cross-entropy comparable
    with the val loss: say so."""
    name = "objective" if kd else "loss"
    return (
        f"epoch {r['epoch']:>3}/{epochs}  train {name} {r['train_loss']:.3f} "
        f"acc {r['train_accuracy']:6.1%}  val loss {r['val_loss']:.3f} "
        f"acc {r['val_accuracy']:6.1%}  {r['images_per_s']:,.0f} img/s  {r['seconds']:.0f}s"
    )


def announce(
    console: Console, t: Trainer, data: Dataset, recipe: Recipe, run: RunSettings, state: State
) -> None:
    """One line with the plan before the first step; one warning when a GPU-sized run starts on
    a CPU (the user may mean it: never an error)."""
    from distill.budget import count_macs
    from distill.sizing import plan_cost
    from students.resnet import ResNetConfig

    world = distributed.world_size()
    where = f"{t.device}" + (f" x {world} processes" if world > 1 else "")
    start = f", resuming at epoch {state.epoch + 1}" if state.epoch or state.step else ""
    _, h, w = data.input_size
    stem = getattr(getattr(t.net, "config", None), "stem", None)
    shape = f"{h}x{w}" + (f", {stem} stem" if stem else "")
    console.print(
        f"training on {len(data.train):,} images at {shape} (val {len(data.val):,}): "
        f"{recipe.name} recipe, {plural(recipe.epochs, 'epoch')} x "
        f"{plural(len(t.loader), 'step')} of {recipe.batch_size * world} images, "
        f"peak lr {recipe.peak_lr(world):.3g}, {where}, {t.precision.name}" + start
    )
    steps = recipe.epochs * len(t.loader)
    if steps < FEW_STEPS:
        console.print(
            styled("warning:", "yellow"),
            f"only {plural(steps, 'optimizer step')} in this run "
            f"({plural(recipe.epochs, 'epoch')} x {len(t.loader)}), too few to learn much; raise "
            f"--epochs or lower --batch-size ({recipe.batch_size} per process now)",
        )
    passes = recipe.epochs * len(data.train)
    if t.device.type != "cpu":
        return
    config = getattr(t.net, "config", None)
    # Counted from the plan where there is one: a forward here would be one the run never made.
    per_image = (
        plan_cost(config, tuple(data.input_size))[1]
        if isinstance(config, ResNetConfig)
        else count_macs(t.net, tuple(data.input_size))
    )
    macs = per_image * passes
    if passes > CPU_WARN_IMAGE_PASSES or macs > CPU_WARN_MACS:
        console.print(
            styled("warning:", "yellow"),
            f"{plural(recipe.epochs, 'epoch')} x {len(data.train):,} images "
            f"x {macs / passes / 1e6:,.0f}M MACs ({macs / 1e12:,.0f} TMACs) is sized for a GPU "
            "and will take hours on this CPU; --recipe quick, a smaller --arch, --train-size or "
            "a smaller --image-size trains in minutes",
        )


def plural(n: int, word: str) -> str:
    """ "1 epoch", "4 epochs" """
    return f"{n:,} {word}{'s' * (n != 1)}"


def failure_warning(ckpt: dict[str, Any]) -> str | None:
    """A loud line when a finished run learned nothing: val top-1 at chance (1/classes) or a
    val loss that is not finite; None otherwise. The exit status stays 0: the file is valid,
    only the model is not useful."""
    import math

    m, recipe = ckpt.get("metrics") or {}, ckpt.get("recipe") or {}
    classes = len(ckpt.get("classes") or ()) or 1
    acc, loss = m.get("val_accuracy"), m.get("val_loss")
    chance = isinstance(acc, float) and acc <= 1.1 / classes
    if not chance and (not isinstance(loss, float) or math.isfinite(loss)):
        return None
    what = (
        f"val top-1 {acc:.1%} is chance for {classes} classes"
        if chance
        else f"the val loss is {loss}"
    )
    from distill.data.loader import steps_per_epoch

    batch = recipe.get("batch_size") or 1
    images = (ckpt.get("data") or {}).get("train_size") or 0
    steps = steps_per_epoch(images, batch, m.get("processes") or 1) * (m.get("epochs_run") or 0)
    peak = m.get("peak_lr")  # what the optimizer was given (Recipe.peak_lr)
    shown = f"{peak:.3g}" if isinstance(peak, float) else "?"
    return (
        f"warning: this model learned nothing: {what}. Likely causes: too few "
        f"steps ({plural(steps, 'step')} here: raise --epochs or lower --batch-size), an lr too "
        f"high for the batch (peak {shown} at {batch} per process: try a third of it with "
        "--lr), "
        "or BatchNorm statistics from too few steps (validation uses their running averages)"
    )
