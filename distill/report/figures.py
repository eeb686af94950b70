"""Shared plot pieces: matplotlib's object API on the Agg canvas (no display, no pyplot global
state), readable log ticks, and point labels that do not collide."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def short_count(n: float) -> str:
    """500k, 2.5M, 21.3M: three significant digits, for tick and line labels."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def log_ticks(axis, lo: float, hi: float, fmt: Callable[[float], str]) -> None:
    """1-2-5 ticks on a log axis: matplotlib's default minor labels collide at this width."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ticks = [m * 10.0**e for e in range(-3, 12) for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v)))
    axis.set_minor_formatter(NullFormatter())


def place_labels(ax, pts: Sequence[tuple[float, float, str]]) -> None:
    """Label each point to its right, nudged up or down (nearest first) until its box overlaps
    no other label and no other marker (pixel boxes under the final axis limits; text width
    estimated)."""
    height, char_w, marker_r, dx = 13, 5.6, 9, 9  # pixels for 8-pt text at 110 dpi
    disp = [tuple(ax.transData.transform((x, y))) for x, y, _ in pts]
    boxes: list[tuple[float, float, float, float]] = []  # x0, x1, y0, y1

    def free(box: tuple[float, float, float, float], own: int) -> bool:
        x0, x1, y0, y1 = box
        if any(x0 < b[1] and b[0] < x1 and y0 < b[3] and b[2] < y1 for b in boxes):
            return False
        return not any(
            j != own and x0 - marker_r < qx < x1 + marker_r and y0 - marker_r < qy < y1 + marker_r
            for j, (qx, qy) in enumerate(disp)
        )

    for i in sorted(range(len(pts)), key=lambda i: disp[i][1]):
        px, py = disp[i]
        width = char_w * len(pts[i][2])
        # 0, -3, +3, -6, +6, ... pixels; a crowded column still ends somewhere (±120 px)
        for shift in (k // 2 * 3 * (1 if k % 2 else -1) for k in range(1, 82)):
            y = py + shift
            box = (px + dx, px + dx + width, y - height / 2, y + height / 2)
            if free(box, i):
                break
        boxes.append(box)
        ax.annotate(
            pts[i][2],
            pts[i][:2],
            xytext=(dx, y - py),
            textcoords="offset pixels",
            fontsize=8,
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if y - py > 3 else None,
        )
