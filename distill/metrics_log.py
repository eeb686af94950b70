"""Per-epoch metrics beside each training output, as they come: `NAME.metrics.csv` (one row per
epoch, rewritten atomically after each, like timm's summary.csv) and, when asked, TensorBoard."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from distill.errors import UserError
from distill.files import atomic_write_text

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
