"""Training curves: loss and accuracy per epoch, from a checkpoint's history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill.report.figures import new_figure
from distill.report.models import COLORS, ROLES, Model, as_float, as_int
from distill.report.output import save_figure


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(history):
        y = as_float(h.get(key))
        if y is not None:
            xs.append(as_float(h.get("epoch")) or i + 1)
            ys.append(y)
    return xs, ys


def plot_curves(model: Model, path: Path) -> Path | None:
    """Loss and accuracy vs epoch, train dashed and validation solid; None without history."""
    history = [h for h in model.ckpt.get("history") or [] if isinstance(h, dict)]
    if not any("val_accuracy" in h or "val_loss" in h for h in history):
        return None
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    color = COLORS[model.role]
    fig = new_figure(10, 3.6)
    loss_ax, acc_ax = fig.subplots(1, 2)
    train_loss = "train loss (KD objective)" if model.ckpt.get("teachers") else "train loss"
    for ax, key, scale, labels in (
        (loss_ax, "loss", 1.0, (train_loss, "val loss (cross-entropy)")),
        (acc_ax, "accuracy", 100.0, ("train top-1", "val top-1")),
    ):
        for split, style, label in (("train", "--", labels[0]), ("val", "-", labels[1])):
            xs, ys = _series(history, f"{split}_{key}")
            if xs:
                ax.plot(
                    xs,
                    [y * scale for y in ys],
                    style,
                    color=color,
                    marker="o",
                    markersize=3,
                    alpha=0.6 if split == "train" else 1.0,
                    label=label,
                )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    loss_ax.set_ylabel("loss (nats per image)")
    acc_ax.set_ylabel("top-1 accuracy")
    acc_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}%"))
    best = as_int(model.ckpt.get("metrics", {}).get("best_epoch"))
    xs, ys = _series(history, "val_accuracy")
    if best in xs:
        y = 100 * ys[xs.index(best)]
        acc_ax.plot([best], [y], "*", color="black", markersize=12, label=f"best: {y:.1f}%")
    loss_ax.legend(fontsize=8, loc="best")
    acc_ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{model.name}: {ROLES[model.role]}, {model.arch}", fontsize=12)
    return save_figure(fig, path)
