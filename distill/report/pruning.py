"""What pruning did to each pruned checkpoint, from its `pruning` record: the headline line,
the path from the source model through every cut to the final model, and the steps table.

Record keys read: params_before/after, macs_before/after, val_accuracy_before (source),
val_accuracy_pruned (right after the last cut), val_accuracy_after (after recovery), budget, and
schedule: [{step, target, ratio, params, macs, val_accuracy, val_accuracy_finetuned?}].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from distill.budget import format_count
from distill.report.figures import new_figure, short_count
from distill.report.output import save_figure
from distill.report.records import COLORS, Model, as_float, as_int
from distill.report.text import code, fmt, points


def pruning_lines(models: Sequence[Model]) -> list[str]:
    """Per pruned checkpoint: size, MACs and accuracy before -> after, from its pruning record."""
    lines = []
    for m in models:
        rec = m.ckpt.get("pruning") if not m.is_onnx else None
        if m.role != "pruned" or not isinstance(rec, dict):
            continue
        parts = []
        for what, unit in (("params", "params"), ("macs", "MACs")):
            before, after = as_int(rec.get(f"{what}_before")), as_int(rec.get(f"{what}_after"))
            if before and after:
                parts.append(
                    f"{format_count(before)} → {format_count(after)} {unit} "
                    f"({after / before - 1:+.0%})"
                )
        a0 = as_float(rec.get("val_accuracy_before"))
        a1 = as_float(rec.get("val_accuracy_after"))
        if a1 is None:
            a1 = m.val_accuracy
        if a0 is not None and a1 is not None:
            acc = f"{a0:.1%} → {a1:.1%} val top-1 ({points(a1, a0)} points"
            cut = as_float(rec.get("val_accuracy_pruned"))
            # What KD fine-tuning won back: accuracy right after the last cut vs at the end.
            acc += f"; {cut:.1%} right after pruning, before recovery)" if cut is not None else ")"
            parts.append(acc)
        src = rec.get("source")
        origin = f" from {code(Path(str(src['path'])).name)}" if isinstance(src, dict) else ""
        if parts:
            lines.append(f"Pruned {code(m.name)}{origin}: " + ", ".join(parts) + ".")
    return lines


@dataclass(frozen=True)
class Waypoint:
    """One point of a pruning trajectory: where the model stood after one event."""

    params: int
    accuracy: float  # val top-1, [0, 1]
    event: str  # source | cut | fine-tuned | final


def trajectory(m: Model) -> tuple[list[Waypoint], str | None]:
    """Source -> each cut (-> fine-tuned between cuts) -> final, from the pruning record; and a
    note when the record predates the per-step schedule (then the path is source, last cut,
    final)."""
    rec = m.ckpt.get("pruning") if not m.is_onnx and m.role == "pruned" else None
    if not isinstance(rec, dict):
        return [], None
    before, after = as_int(rec.get("params_before")), as_int(rec.get("params_after")) or m.params
    a0, a1 = as_float(rec.get("val_accuracy_before")), as_float(rec.get("val_accuracy_after"))
    a1 = a1 if a1 is not None else m.val_accuracy
    path = [Waypoint(before, a0, "source")] if before and a0 is not None else []
    schedule = [s for s in rec.get("schedule") or [] if isinstance(s, dict)]
    note = None
    for step in schedule:
        params = as_int(step.get("params"))
        for key, event in (("val_accuracy", "cut"), ("val_accuracy_finetuned", "fine-tuned")):
            acc = as_float(step.get(key))
            if params and acc is not None:
                path.append(Waypoint(params, acc, event))
    if not schedule:
        cut = as_float(rec.get("val_accuracy_pruned"))
        if after and cut is not None:
            path.append(Waypoint(after, cut, "cut"))
        note = (
            f"{code(m.name)}'s pruning record has no per-step schedule (written before distill "
            "kept one): its trajectory shows the source, the last cut and the final model only."
        )
    if after and a1 is not None:
        path.append(Waypoint(after, a1, "final"))
    return (path, note) if len(path) >= 2 else ([], note)


# Marker per event: a cut drops accuracy (down triangle), fine-tuning wins some back (up).
EVENT_STYLE = {
    "source": ("o", COLORS["kd"], "source"),
    "cut": ("v", "#ff7f0e", "right after a cut"),
    "fine-tuned": ("^", "#17becf", "after fine-tuning between cuts"),
    "final": ("*", COLORS["pruned"], "final (after recovery)"),
}


def draw_trajectory(ax, path: Sequence[Waypoint], budget: int | None) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    xs, ys = [w.params for w in path], [100 * w.accuracy for w in path]
    ax.plot(xs, ys, color="0.6", linewidth=1, zorder=1)
    for event, (marker, color, label) in EVENT_STYLE.items():
        pts = [(w.params, 100 * w.accuracy) for w in path if w.event == event]
        if pts:
            ax.scatter(
                *zip(*pts, strict=True),
                marker=marker,
                s=160 if event == "final" else 55,
                color=color,
                edgecolor="black",
                linewidth=0.5,
                zorder=3,
                label=label,
            )
    for i, w in enumerate(path):
        ax.annotate(
            f"{100 * w.accuracy:.1f}%",
            (w.params, 100 * w.accuracy),
            xytext=(6, 6 if i % 2 else -10),  # alternate sides: a cut and its fine-tune share x
            textcoords="offset points",
            fontsize=7,
        )
    ticks = sorted({*xs, *([budget] if budget else [])})
    if budget:
        ax.axvline(budget, color="black", linestyle="--", linewidth=1, label="budget")
    ax.set_xscale("log")
    lo, hi = min(ticks), max(ticks)
    ax.set_xlim(hi * 1.15, lo / 1.15)  # largest on the left: the path reads as time passing
    # Tick every distinct size, skipping any within 8% of the last shown (labels would collide)
    shown = [t for i, t in enumerate(ticks) if i == 0 or t / ticks[i - 1] > 1.08]
    ax.xaxis.set_major_locator(FixedLocator(shown))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: short_count(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelsize=7, labelrotation=30)
    ax.set_xlabel("trainable parameters (log scale, shrinking to the right)")
    ax.set_ylabel("val top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_trajectory(m: Model, path_png: Path) -> Path | None:
    path, _ = trajectory(m)
    if not path:
        return None
    fig = new_figure(8, 4.5)
    ax = fig.subplots()
    draw_trajectory(ax, path, as_int((m.ckpt.get("pruning") or {}).get("budget")))
    ax.set_title(f"{m.name}: pruning trajectory, each cut and what fine-tuning won back")
    return save_figure(fig, path_png)


def steps_table(m: Model) -> list[str]:
    """One row per pruning step, from the record's schedule (empty without one)."""
    schedule = [
        s for s in (m.ckpt.get("pruning") or {}).get("schedule") or [] if isinstance(s, dict)
    ]
    if m.is_onnx or not schedule:
        return []
    tuned = any("val_accuracy_finetuned" in s for s in schedule)
    head = ["step", "target params", "params", "MACs", "val top-1 after the cut"]
    head += ["after fine-tuning"] if tuned else []
    rows = [f"**Steps of {code(m.name)}**:", "", "| " + " | ".join(head) + " |"]
    rows.append("|" + "--:|" * len(head))
    for s in schedule:
        cells = [str(s.get("step", "?"))]
        cells += [fmt(as_int(s.get(k)), format_count) for k in ("target", "params", "macs")]
        cells += [fmt(as_float(s.get("val_accuracy")), lambda v: f"{v:.1%}")]
        if tuned:
            cells += [fmt(as_float(s.get("val_accuracy_finetuned")), lambda v: f"{v:.1%}")]
        rows.append("| " + " | ".join(cells) + " |")
    return [*rows, ""]
