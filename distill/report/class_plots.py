"""Plots of classes.py's numbers: per-class accuracy dots, KD gain bars, confusion heatmaps.

Classes run down the y axis in every plot, so names stay horizontal and readable for CIFAR-100
as for CIFAR-10; figures grow in height with the class count.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distill.report.classes import WIDE, ClassScores, gains
from distill.report.figures import new_figure
from distill.report.output import save_figure
from distill.report.records import COLORS, ROLES


def _finish(ax, classes: Sequence[str], xlabel: str, title: str) -> None:
    """Classes down the y axis (class 0 on top, as in the table), values along x."""
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(classes, fontsize=8 if len(classes) <= WIDE else 5)
    ax.set_ylim(len(classes) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")


def _height(n_classes: int) -> float:
    return 1.6 + 0.22 * n_classes if n_classes <= WIDE else 1.6 + 0.1 * n_classes


def plot_per_class(scores: Sequence[ClassScores], path: Path) -> Path | None:
    """One row per class, one dot per model (colour by role), a grey bar spanning them."""
    same = [s for s in scores if s.classes == scores[0].classes] if scores else []
    if not same:
        return None
    classes = same[0].classes
    fig = new_figure(8, _height(len(classes)))
    ax = fig.subplots()
    for i in range(len(classes)):
        vals = [100 * s.per_class[i] for s in same]
        ax.plot([min(vals), max(vals)], [i, i], color="0.85", linewidth=3, zorder=1)
    markers = ["o", "s", "D", "^", "v"]
    for j, s in enumerate(same):
        ax.scatter(
            [100 * v for v in s.per_class],
            range(len(classes)),
            s=36,
            marker=markers[j % len(markers)],
            color=COLORS[s.model.role],
            edgecolor="black",
            linewidth=0.5,
            zorder=3,
            label=f"{s.model.name} ({ROLES[s.model.role]})",
        )
    _finish(ax, classes, "val top-1 of the class (%)", "Per-class accuracy (validation split)")
    return save_figure(fig, path)


def plot_kd_gain(scores: Sequence[ClassScores], path: Path) -> Path | None:
    """KD student minus its label-only baseline per class, in points; one bar per class and KD
    student, green where KD helped, red where it hurt, the mean gain as a dashed line."""
    pairs = gains(scores)
    if not pairs:
        return None
    classes = pairs[0][0].classes
    pairs = [p for p in pairs if p[0].classes == classes]
    fig = new_figure(8, _height(len(classes)))
    ax = fig.subplots()
    height = 0.8 / len(pairs)
    for j, (kd, base, gain) in enumerate(pairs):
        ys = [i - 0.4 + height * (j + 0.5) for i in range(len(classes))]
        colors = ["#2ca02c" if g >= 0 else "#d62728" for g in gain]
        ax.barh(ys, gain, height=height * 0.9, color=colors, edgecolor="black", linewidth=0.4)
        if len(classes) <= WIDE:
            for y, g in zip(ys, gain, strict=True):
                ax.annotate(
                    f"{g:+.1f}",
                    (g, y),
                    xytext=(4 if g >= 0 else -4, 0),
                    textcoords="offset points",
                    ha="left" if g >= 0 else "right",
                    va="center",
                    fontsize=7,
                )
        mean = sum(gain) / len(gain)
        label = f"{kd.model.name} vs {base.model.name}: mean {mean:+.1f}"
        ax.axvline(mean, color="black", linestyle="--", linewidth=0.8, label=label)
    ax.axvline(0, color="black", linewidth=0.8)
    lo = min(min(g) for *_, g in pairs)
    hi = max(max(g) for *_, g in pairs)
    pad = 0.25 * max(hi - lo, 1.0)  # room for the numbers beside the bars
    ax.set_xlim(min(lo, 0) - pad, max(hi, 0) + pad)
    _finish(
        ax,
        classes,
        "KD student minus label-only baseline (points of val top-1)",
        "KD gain per class (right of 0: distillation helped)",
    )
    return save_figure(fig, path)


def draw_confusion(fig, s: ClassScores) -> None:
    """Row-normalised heatmap: cell (i, j) is the share of true class i predicted as j."""
    from matplotlib.ticker import PercentFormatter

    frac = s.row_fractions()
    n = len(s.classes)
    ax = fig.subplots()
    image = ax.imshow([[100 * v for v in row] for row in frac], cmap="Blues", vmin=0, vmax=100)
    if n <= 12:  # numbers fit in the cells; beyond that the colour says it
        for i, row in enumerate(frac):
            for j, v in enumerate(row):
                ink = "white" if v > 0.6 else "black"  # readable on dark and light cells
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7, color=ink)
    ticks = range(n) if n <= 30 else range(0, n, 5)
    ax.set_xticks(list(ticks))
    ax.set_yticks(list(ticks))
    fontsize = 8 if n <= WIDE else 5
    ax.set_xticklabels([s.classes[i] for i in ticks], rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticklabels([s.classes[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, format=PercentFormatter(), label="share of the true class")
    ax.set_title(f"{s.model.name} ({ROLES[s.model.role]}): confusion on the validation split")


def plot_confusion(s: ClassScores, path: Path) -> Path | None:
    if s.confusion is None:
        return None
    side = 5.5 if len(s.classes) <= WIDE else 9
    fig = new_figure(side + 1.2, side)
    draw_confusion(fig, s)
    return save_figure(fig, path)
