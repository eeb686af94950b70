"""The two trade-off plots: val accuracy against parameters and against CPU latency."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from distill.report.figures import log_ticks, new_figure, place_labels, short_count
from distill.report.output import save_figure
from distill.report.records import COLORS, Model


def _scatter(
    ax,
    models: Sequence[Model],
    x_of: Callable[[Model], float],
    *,
    log_x: bool,
    xlim: tuple[float, float],
    hollow: Callable[[Model], bool] = lambda _m: False,
) -> None:
    """Val accuracy vs x_of(model): colour by role, int8 diamonds, other ONNX squares; hollow
    where `hollow(m)` (a noisy latency: drawn, but not as a fact)."""
    ys = [100 * m.val_accuracy for m in models]
    pad = max(1.0, 0.12 * (max(ys) - min(ys)))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    seen: set[str] = set()
    for m, y in zip(models, ys, strict=True):
        style = {
            "s": 110 if m.role == "teacher" else 70,  # a teacher under a student shows as a ring
            "marker": "D" if m.precision == "int8" else ("s" if m.is_onnx else "o"),
            "color": COLORS[m.role],
            "edgecolor": "black",
            "linewidth": 0.6,
            "zorder": 3,
        }
        if m.kind_label not in seen:  # the legend shows the filled marker, even for a hollow one
            ax.scatter([], [], label=m.kind_label, **style)
            seen.add(m.kind_label)
        if hollow(m):
            style |= {"facecolor": "white", "edgecolor": COLORS[m.role], "linewidth": 1.6}
        ax.scatter([x_of(m)], [y], **style)
    place_labels(
        ax, [(x_of(m), y, f"{m.name} ({y:.1f}%)") for m, y in zip(models, ys, strict=True)]
    )
    ax.grid(alpha=0.3, which="both")
    ax.set_ylabel("val top-1 accuracy (%)")


def plot_accuracy_vs_params(
    models: Sequence[Model], budget_lines: dict[str, int], path: Path
) -> Path | None:
    """Every distinct model (fp32 ONNX copies of a checkpoint left out), log-x, budgets as lines."""
    pts = [
        m
        for m in models
        if m.params
        and m.val_accuracy is not None
        and not (m.is_onnx and m.source and m.precision == "fp32")
    ]
    if not pts:
        return None
    xs = [m.params for m in pts] + list(budget_lines.values())
    xlim = (min(xs) / 1.6, max(xs) * 3)  # room on the right for the last labels
    fig = new_figure(8, 5)
    ax = fig.subplots()
    _scatter(ax, pts, lambda m: float(m.params), log_x=True, xlim=xlim)
    for i, (label, value) in enumerate(sorted(budget_lines.items(), key=lambda kv: -kv[1])):
        ax.axvline(
            value,
            color="black",
            linestyle=("--", ":")[i % 2],
            linewidth=1,
            label=f"{label}: {short_count(value)} params",
        )
    log_ticks(ax.xaxis, *xlim, short_count)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_title("Accuracy vs size (upper left is better)")
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def latency_points(models: Sequence[Model]) -> list[Model]:
    """The models the accuracy-vs-latency plot draws: every one with a val accuracy and an
    onnxruntime CPU p50 at batch 1, the int8 files timed beside their fp32 export included."""
    # A checkpoint benchmarked beside its own fp32 export would be the same point twice.
    exported = {m.source for m in models if m.is_onnx and m.precision == "fp32" and m.latency_ms}
    return [
        m for m in models if m.latency_ms and m.val_accuracy is not None and m.name not in exported
    ]


def plot_accuracy_vs_latency(models: Sequence[Model], path: Path) -> Path | None:
    """onnxruntime CPU p50 at batch 1 for every benchmarked ONNX file."""
    pts = latency_points(models)
    if not pts:
        return None
    lat = [m.latency_ms for m in pts]
    log_x = max(lat) / min(lat) > 8  # a teacher next to an int8 student spans decades
    xlim = (min(lat) / 1.6, max(lat) * 3) if log_x else (0, max(lat) * 1.45)
    fig = new_figure(8, 5)
    ax = fig.subplots()
    noisy = lambda m: bool(m.bench.get("noise"))  # noqa: E731
    _scatter(ax, pts, lambda m: m.latency_ms, log_x=log_x, xlim=xlim, hollow=noisy)
    if log_x:
        log_ticks(ax.xaxis, *xlim, lambda v: f"{v:g}")
    scale = ", log scale" if log_x else ""
    ax.set_xlabel(f"onnxruntime CPU latency, p50 at batch 1 (ms{scale})")
    title = "Accuracy vs latency (upper left is better)"
    if any(noisy(m) for m in pts):
        title += "\nhollow markers: noisy latency, not a steady number (see the tables)"
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)
