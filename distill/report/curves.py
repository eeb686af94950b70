"""Training curves: loss and accuracy per epoch, from a checkpoint's history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill.report.figures import new_figure
from distill.report.output import save_figure
from distill.report.records import COLORS, ROLES, Model, as_float, as_int


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(history):
        y = as_float(h.get(key))
        if y is not None:
            xs.append(as_float(h.get("epoch")) or i + 1)
            ys.append(y)
    return xs, ys


def loss_ceiling(values: Sequence[float]) -> float | None:
    """Top of the loss axis when some values would flatten the rest (a spike), else None.

    The bulk reaches the 90th percentile (the largest value below it, so one spike never sets
    it); anything more than 4 bulk-spans above that is an outlier. A steep but ordinary first
    epoch stays within the span; a loss that jumps 100x for one epoch does not.
    """
    if len(values) < 3:
        return None
    ordered = sorted(values)
    bulk = ordered[int(0.9 * (len(ordered) - 1))]
    ceiling = bulk + 4 * max(bulk - ordered[0], 0.05 * abs(bulk))
    return ceiling if ordered[-1] > ceiling else None


def _mark_clipped(ax, points: Sequence[tuple[float, float, str]], top: float, color: str) -> None:
    """Off-scale points as one triangle per epoch on the top edge, labelled with the true
    values ("train 1e+06, val 50")."""
    for x in sorted({x for x, _, _ in points}):
        text = ", ".join(f"{split} {y:.3g}" for px, y, split in points if px == x)
        ax.plot([x], [top], "^", color=color, markersize=7, clip_on=False, zorder=4)
        ax.annotate(text, (x, top), xytext=(6, -10), textcoords="offset points", fontsize=7)


def draw_curves(fig, model: Model) -> bool:
    """Loss and accuracy vs epoch on `fig`, train dashed and validation solid; the loss axis
    stops above the bulk of the curve when a spike would flatten it (spikes marked on the
    edge). False without a history to draw."""
    history = [h for h in model.ckpt.get("history") or [] if isinstance(h, dict)]
    if not any("val_accuracy" in h or "val_loss" in h for h in history):
        return False
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    color = COLORS[model.role]
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
    losses = [
        (x, y, split)
        for split in ("train", "val")
        for x, y in zip(*_series(history, f"{split}_loss"), strict=True)
    ]
    top = loss_ceiling([y for _, y, _ in losses])
    if top is not None:
        low = min(y for _, y, _ in losses)
        loss_ax.set_ylim(low - 0.05 * (top - low), top)
        _mark_clipped(loss_ax, [p for p in losses if p[1] > top], top, color)
        loss_ax.set_title("▲: off the scale (true value beside it)", fontsize=8)
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
    return True


def plot_curves(model: Model, path: Path) -> Path | None:
    """The training curves PNG, or None when the checkpoint holds no history."""
    fig = new_figure(10, 3.6)
    return save_figure(fig, path) if draw_curves(fig, model) else None
