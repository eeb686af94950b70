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
    from distill.trainer import Sums, Trainer
from distill.files import atomic_write_text

# A GPU-sized run on a CPU: more image passes than this gets one warning line before it starts.
CPU_WARN_IMAGE_PASSES = 3_000_000
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
    def __init__(self, out: Path, tensorboard: Path | None = None) -> None:
        self.csv = metrics_path(out)
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


def stats_text(sums: Sums, seen_before: int, t_epoch: float) -> str:
    rate = (sums.seen - seen_before) * distributed.world_size() / (time.perf_counter() - t_epoch)
    return (
        f"loss {float(sums.loss) / sums.seen:.3f}  "
        f"acc {float(sums.correct) / sums.seen:6.1%}  {rate:,.0f} img/s"
    )


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.3f} "
        f"acc {r['train_accuracy']:6.1%}  val loss {r['val_loss']:.3f} "
        f"acc {r['val_accuracy']:6.1%}  {r['images_per_s']:,.0f} img/s  {r['seconds']:.0f}s"
    )


def announce(
    console: Console, t: Trainer, data: Dataset, recipe: Recipe, run: RunSettings, state: State
) -> None:
    """One line with the plan before the first step; one warning when a GPU-sized run starts on
    a CPU (the user may mean it: never an error)."""
    world = distributed.world_size()
    where = f"{t.device}" + (f" x {world} processes" if world > 1 else "")
    start = f", resuming at epoch {state.epoch + 1}" if state.epoch or state.step else ""
    console.print(
        f"training on {len(data.train):,} images (val {len(data.val):,}): {recipe.name} recipe, "
        f"{recipe.epochs} epochs x {len(t.loader)} steps of {recipe.batch_size * world} images, "
        f"peak lr {recipe.lr_at(recipe.batch_size * world):.3g}, {where}, {t.precision.name}"
        + start
    )
    steps = recipe.epochs * len(t.loader)
    if steps < FEW_STEPS:
        console.print(
            styled("warning:", "yellow"),
            f"only {steps} optimizer step{'s' * (steps != 1)} in this run "
            f"({recipe.epochs} epochs x {len(t.loader)}), too few to learn much; raise --epochs "
            f"or lower --batch-size ({recipe.batch_size} per process now)",
        )
    passes = recipe.epochs * len(data.train)
    if t.device.type == "cpu" and passes > CPU_WARN_IMAGE_PASSES:
        console.print(
            styled("warning:", "yellow"),
            f"the {recipe.name} recipe ({recipe.epochs} epochs x "
            f"{len(data.train):,} images) is sized for a GPU and will take many hours on this "
            "CPU; --recipe quick trains in minutes",
        )
