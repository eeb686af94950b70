"""Latency and throughput against batch size: every file, engine and precision bench measured.

One plot and one table per device: CPU and CUDA numbers come from different hardware and are
never drawn on one axis. Noisy measurements are drawn hollow and flagged ⚠ in the table, with
the reason below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distill.report.bench_records import BenchRecord, Measurement
from distill.report.figures import log_ticks, new_figure
from distill.report.output import PLOTS, save_figure
from distill.report.text import code, fmt, plain

FLAG = "⚠"  # beside a number that is not steady; the reason is listed under the table
DEVICES = {"cpu": "CPU", "cuda": "CUDA"}
ENGINE_STYLES = {"onnxruntime": "-", "pytorch": "--", "openvino": ":"}
PRECISION_MARKERS = {"fp32": "o", "bf16": "s", "fp16": "^", "int8": "D", "default": "v"}


def lines_of(records: Sequence[BenchRecord], device: str) -> dict[tuple, list[Measurement]]:
    """(file, engine, precision) -> its measurements by increasing batch size, on one device."""
    out: dict[tuple, list[Measurement]] = {}
    for rec in records:
        if rec.device == device:
            for row in rec.results:
                out.setdefault(row.line, []).append(row)
    return {k: sorted(v, key=lambda r: r.batch_size) for k, v in out.items()}


def _machine(records: Sequence[BenchRecord], device: str) -> str:
    recs = [r for r in records if r.device == device]
    hardware = " / ".join(sorted({plain(r.hardware) for r in recs}))
    threads = sorted({r.threads for r in recs if r.threads})
    return hardware + (f", {'/'.join(map(str, threads))} threads" if threads else "")


def _log_axis(axis, values: Sequence[float]) -> tuple[float, float]:
    """Limits and 1-2-5 tick labels (plain numbers, not 4x10^3) spanning `values`."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = min(values) / 1.3, max(values) * 1.3
    label = lambda v: f"{v:,.0f}" if v >= 10 else f"{v:g}"  # noqa: E731  10,000 not 1e+04
    if hi / lo < 10:  # under a decade 1-2-5 leaves one tick or none: add the 3s, 4s and 8s
        ticks = [m * 10.0**e for e in range(-3, 9) for m in (1, 1.5, 2, 3, 4, 5, 6, 8)]
        axis.set_major_locator(FixedLocator([t for t in ticks if lo <= t <= hi]))
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: label(v)))
        axis.set_minor_formatter(NullFormatter())
    else:
        log_ticks(axis, lo, hi, label)
    return lo, hi


def draw_latency(fig, records: Sequence[BenchRecord], device: str) -> bool:
    """p50 latency and images/s against batch size on `fig`, log axes; False if nothing to draw.
    Colour: file; line style: engine; marker: precision; hollow marker: noisy measurement."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lines = lines_of(records, device)
    if not lines:
        return False
    lat_ax, tput_ax = fig.subplots(1, 2)
    files = list(dict.fromkeys(k[0] for k in lines))
    batches = sorted({r.batch_size for rows in lines.values() for r in rows})
    any_noisy = False
    for (file, engine, precision), rows in lines.items():
        color = f"C{files.index(file) % 10}"
        style = {
            "color": color,
            "linestyle": ENGINE_STYLES.get(engine, "-."),
            "marker": PRECISION_MARKERS.get(precision, "P"),
            "markersize": 6,
        }
        for ax, value in ((lat_ax, "p50_ms"), (tput_ax, "images_per_s")):
            xs = [r.batch_size for r in rows]
            label = f"{file} · {engine} {precision}" if ax is lat_ax else None
            ax.plot(xs, [getattr(r, value) for r in rows], label=label, **style)
            noisy = [r for r in rows if r.noise]
            any_noisy |= bool(noisy)
            if noisy:  # redrawn hollow over the filled marker: drawn, but not as a fact
                ax.plot(
                    [r.batch_size for r in noisy],
                    [getattr(r, value) for r in noisy],
                    linestyle="none",
                    marker=style["marker"],
                    markersize=6,
                    color=color,
                    markerfacecolor="white",
                    zorder=3,
                )
    all_rows = [r for rows in lines.values() for r in rows]
    for ax, value, ylabel in (
        (lat_ax, "p50_ms", "latency, p50 (ms, log scale)"),
        (tput_ax, "images_per_s", "throughput (images/s, log scale)"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(batches[0] / 1.5, batches[-1] * 1.5)
        ax.xaxis.set_major_locator(FixedLocator(batches))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylim(*_log_axis(ax.yaxis, [getattr(r, value) for r in all_rows]))
        ax.set_xlabel("batch size (log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="major")
    lat_ax.set_title("latency (lower is better)", fontsize=10)
    tput_ax.set_title("throughput (higher is better)", fontsize=10)
    fig.legend(
        loc="outside right upper", fontsize=7, title="file · engine precision", title_fontsize=7
    )
    title = f"{DEVICES[device]}: {_machine(records, device)}"
    if any_noisy:
        title += "\nhollow markers: noisy measurements, not steady numbers (see the table)"
    fig.suptitle(title, fontsize=10)
    return True


def plot_latency(records: Sequence[BenchRecord], device: str, path: Path) -> Path | None:
    lines = lines_of(records, device)
    fig = new_figure(11, 4.2 + 0.12 * max(0, len(lines) - 12))
    return save_figure(fig, path) if draw_latency(fig, records, device) else None


def _cell(row: Measurement | None) -> str:
    if row is None:
        return "—"
    flag = f" {FLAG}" if row.noise else ""
    return f"{row.p50_ms:.2f} ({row.images_per_s:,.0f}/s){flag}"


def latency_table(records: Sequence[BenchRecord], device: str) -> list[str]:
    """One row per (file, engine, precision), one column per batch size, flags explained."""
    lines = lines_of(records, device)
    if not lines:
        return []
    batches = sorted({r.batch_size for rows in lines.values() for r in rows})
    has_acc = any(r.val_accuracy is not None for rows in lines.values() for r in rows)
    head = ["file", "engine", "precision"] + (["val top-1"] if has_acc else [])
    head += [f"batch {b}: p50 ms (images/s)" for b in batches]
    out = [
        f"**{DEVICES[device]}** ({_machine(records, device)}):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 3 + ["--:"] * (len(head) - 3)) + "|",
    ]
    for (file, engine, precision), rows in lines.items():
        by_batch = {r.batch_size: r for r in rows}
        acc = next((r.val_accuracy for r in rows if r.val_accuracy is not None), None)
        cells = [code(file), plain(engine), plain(precision)]
        cells += [fmt(acc, lambda v: f"{v:.2%}")] if has_acc else []
        cells += [_cell(by_batch.get(b)) for b in batches]
        out.append("| " + " | ".join(cells) + " |")
    flagged = _flag_lines([r for rows in lines.values() for r in rows])
    return [*out, "", *flagged, *([""] if flagged else [])]


def _flag_lines(rows: Sequence[Measurement]) -> list[str]:
    """One reason line per flagged measurement; one for a whole file when all of its
    measurements share the reason (a busy machine flags a whole record)."""
    out = []
    for file in dict.fromkeys(r.file for r in rows):
        mine = [r for r in rows if r.file == file]
        reasons = {r.noise for r in mine}
        if len(reasons) == 1 and None not in reasons and len(mine) > 1:
            out.append(f"- {FLAG} {code(file)}, every measurement: {mine[0].noise}.")
            continue
        out += [
            f"- {FLAG} {code(file)} {plain(r.engine)} {plain(r.precision)}, "
            f"batch {r.batch_size}: {plain(r.noise)}."
            for r in mine
            if r.noise
        ]
    return out


def speedup_lines(records: Sequence[BenchRecord], device: str) -> list[str]:
    """onnxruntime over PyTorch eager per batch size, measured in the same run; flagged where
    either measurement it divides is noisy."""
    out = []
    for rec in records:
        if rec.device != device or not rec.speedup:
            continue
        parts = []
        for batch, ratio in sorted(rec.speedup.items()):
            noise = rec.speedup_noise(batch)
            parts.append(f"batch {batch} {ratio:.1f}x" + (f" {FLAG} ({noise})" if noise else ""))
        out.append(f"- {code(rec.file)}: " + ", ".join(parts))
    if not out:
        return []
    return ["onnxruntime vs PyTorch eager, p50 ratio measured in the same run:", "", *out, ""]


def latency_section(records: Sequence[BenchRecord], pngs: dict[str, Path | None]) -> list[str]:
    """The Markdown of the latency section; `pngs` maps device -> its plot (None: not drawn)."""
    out: list[str] = []
    for device in DEVICES:
        table = latency_table(records, device)
        if not table:
            continue
        png = pngs.get(device)
        out += table + speedup_lines(records, device)
        if png is not None:
            out += [f"![{DEVICES[device]} latency vs batch size]({PLOTS}/{png.name})", ""]
    if not out:
        return []
    intro = (
        "Every engine, precision and batch size in `bench.json`. Cells: median latency of one "
        f"batch in ms (images per second). {FLAG}: a noisy measurement (long tail or a busy "
        "machine), not a steady number; the reason is listed under the table."
    )
    return ["## Latency vs batch size", "", intro, "", *out]
