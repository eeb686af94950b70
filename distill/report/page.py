"""The report page: sections in reading order, pictures before tables, written atomically with
its plots. Each section returns its Markdown lines and the plots it wrote."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from distill.errors import UserError
from distill.files import atomic_write, check_output
from distill.report.class_plots import plot_confusion, plot_kd_gain, plot_per_class
from distill.report.classes import class_table, collect_scores, gain_line, gains
from distill.report.collect import collect_models
from distill.report.curves import plot_curves
from distill.report.headline import budgets, data_note, kd_gain_lines
from distill.report.latency import FLAG, latency_section, plot_latency
from distill.report.output import MARK, PLOTS, is_ours, slug
from distill.report.provenance import provenance
from distill.report.pruning import plot_trajectory, pruning_lines, steps_table, trajectory
from distill.report.records import Collection, Model
from distill.report.runs import runs_section
from distill.report.sweep import has_models, sweep_section
from distill.report.tables import render_table
from distill.report.text import code, plain
from distill.report.tradeoff import plot_accuracy_vs_latency, plot_accuracy_vs_params
from distill.ship import ship_line

# The PNG names this module writes; any other file of these shapes in plots/ is a stale one of
# ours (a model no longer here) and is removed. Files of other names are never touched.
OUR_PLOTS = (
    "accuracy_vs_*.png",
    "latency_vs_batch_*.png",
    "per_class_accuracy.png",
    "kd_gain_per_class.png",
    "confusion_*.png",
    "pruning_*.png",
    "curves_*.png",
    "sweep_*.png",
)

Section = tuple[list[str], list[Path | None]]


def _image(title: str, png: Path | None) -> list[str]:
    # The title may hold a file name: a `]` in it would end the link, a tag would be markup.
    return [f"![{plain(title)}]({PLOTS}/{png.name})", ""] if png is not None else []


def missing_notes(col: Collection) -> list[str]:
    notes = []
    ckpts = [m for m in col.models if not m.is_onnx]
    roles = {m.role for m in ckpts}
    # Hints name a real file: the KD student when there is one (the model worth deploying).
    best = next((m for m in ckpts if m.role == "kd"), ckpts[0] if ckpts else col.models[0])
    onnx = next((m for m in col.models if m.is_onnx), None)
    if onnx is None:
        notes.append(f"No ONNX exports here: `distill export onnx {best.path} [--int8]` adds them.")
    if col.bench_file is None:
        target = onnx.path if onnx else best.path
        notes.append(
            "No `bench.json`: no latency column, latency table or latency plots; "
            f"`distill bench {target} --json {col.run_dir / 'bench.json'}` measures it."
        )
    elif not any(m.latency_ms for m in col.models):
        notes.append("`bench.json` holds no onnxruntime CPU batch-1 latency for the files here.")
    if "kd" in roles and "baseline" not in roles:
        notes.append("No label-only baseline student: the KD gain cannot be measured.")
    if col.pipeline is None:
        notes.append("No `pipeline.json`: stage wall times are not shown.")
    notes += col.problems
    return notes


def latency_note(models: Sequence[Model]) -> list[str]:
    """Where the latency column comes from, and onnxruntime's speed-up over PyTorch eager."""
    timed = [m for m in models if m.bench]
    if not timed:
        return []
    env = timed[0].bench
    note = (
        f"ORT p50: onnxruntime on CPU ({plain(env.get('cpu') or 'unknown CPU')}, "
        f"{env.get('threads', '?')} threads), median latency of one image, from `bench.json`."
    )
    ratios = [
        f"{code(m.name)} {m.bench['speedup']:.1f}x"
        + (f" {FLAG} ({plain(m.bench['speedup_noise'])})" if m.bench.get("speedup_noise") else "")
        for m in timed
        if m.bench.get("speedup")
    ]
    if ratios:
        note += " onnxruntime vs PyTorch eager at batch 1, same run: " + ", ".join(ratios) + "."
    return [note, ""]


def tradeoff_section(col: Collection, plots: Path) -> Section:
    size_plot = plot_accuracy_vs_params(col.models, budgets(col), plots / "accuracy_vs_params.png")
    latency_plot = plot_accuracy_vs_latency(col.models, plots / "accuracy_vs_latency.png")
    lines = _image("Accuracy vs parameters", size_plot)
    return lines + _image("Accuracy vs latency", latency_plot), [size_plot, latency_plot]


def class_section(col: Collection, plots: Path, notes: list[str]) -> Section:
    scores, gaps = collect_scores(col.models)
    notes += gaps
    if not scores:
        return [], []
    per_class = plot_per_class(scores, plots / "per_class_accuracy.png")
    gain = plot_kd_gain(scores, plots / "kd_gain_per_class.png")
    confusions = [
        (s, plot_confusion(s, plots / f"confusion_{slug(s.model.path.stem)}.png")) for s in scores
    ]
    pairs = gains(scores)
    lines = [
        "## Per-class accuracy",
        "",
        "Validation split, top-1 of each true class. Confusion: each row is a true class, "
        "split by what the model predicted (row %).",
        "",
    ]
    lines += [f"- {gain_line(*g)}" for g in pairs] + ([""] if pairs else [])
    lines += _image("Per-class accuracy", per_class) + _image("KD gain per class", gain)
    lines += class_table(scores)
    for s, png in confusions:
        lines += _image(f"{s.model.name} confusion matrix", png)
    return lines, [per_class, gain, *[png for _, png in confusions]]


def pruning_section(col: Collection, plots: Path, notes: list[str]) -> Section:
    lines, pngs = [], []
    for m in col.models:
        path, note = trajectory(m)
        notes += [note] if note else []
        png = plot_trajectory(m, plots / f"pruning_{slug(m.path.stem)}.png") if path else None
        pngs.append(png)
        lines += _image(f"{m.name} pruning trajectory", png) + steps_table(m)
    return (["## Pruning", "", *lines] if lines else []), pngs


def curves_section(col: Collection, plots: Path) -> Section:
    pngs = [
        (m, plot_curves(m, plots / f"curves_{slug(m.path.stem)}.png"))
        for m in col.models
        if not m.is_onnx
    ]
    images = [line for m, png in pngs for line in _image(f"{m.name} training curves", png)]
    if not images:
        return [], []
    intro = (
        "Dashed: training (augmented batches); solid: validation. "
        "The star marks the epoch whose weights were kept."
    )
    return ["## Training curves", "", intro, "", *images], [png for _, png in pngs]


def write_report(run_dir: Path, force: bool = False) -> Path:
    """Write run_dir/report.md and run_dir/plots/*.png; return the report's path.

    A report.md the tool did not write (the user's own) is only replaced with `force`."""
    run_dir = Path(run_dir)
    check_output(run_dir / "report.md", force, (".md",), flag="report", ours=is_ours)
    plots = run_dir / PLOTS
    sweep = sweep_section(run_dir, plots)
    if sweep[0] and not has_models(run_dir):  # a sweep folder: its models are its trials'
        lines = [MARK, f"# Sweep report: {code(run_dir.resolve().name)}", "", *sweep[0]]
        report = run_dir / "report.md"
        atomic_write(report, lambda tmp: Path(tmp).write_text("\n".join(lines), encoding="utf-8"))
        return report
    try:
        col = collect_models(run_dir)
    except UserError:
        # A folder of runs (runs/teacher, runs/student2, ...) holds no model itself: compare
        # the runs.
        section, pngs = runs_section(run_dir, plots)
        if not section:
            raise
        title = [MARK, f"# Runs in {code(run_dir.resolve().name)}", ""]
        return _write(run_dir, title + section, {p.name for p in pngs if p is not None})
    lines = [MARK, f"# Distillation report: {code(run_dir.resolve().name)}", ""]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines += [f"_{len(col.models)} model files, written {now}._", ""]
    shipped = ship_line(col.models)
    lines += [f"**{shipped}**", ""] if shipped else []
    headline = kd_gain_lines(col.models) + pruning_lines(col.models)
    lines += [f"- {line}" for line in headline] + ([""] if headline else [])
    lines += [data_note(col.models), "", "## Models", "", render_table(col.models), ""]
    lines += latency_note(col.models)

    notes = missing_notes(col)
    latency_pngs = {
        device: plot_latency(col.bench, device, plots / f"latency_vs_batch_{device}.png")
        for device in ("cpu", "cuda")
    }
    sections = [
        runs_section(run_dir, plots),
        tradeoff_section(col, plots),
        class_section(col, plots, notes),
        pruning_section(col, plots, notes),
        (latency_section(col.bench, latency_pngs), list(latency_pngs.values())),
        curves_section(col, plots),
        sweep,
    ]
    written = {png.name for _, pngs in sections for png in pngs if png is not None}
    lines += [line for section, _ in sections for line in section]
    lines += provenance(col)
    if notes:
        lines += ["## Missing or skipped", "", *[f"- {n}" for n in notes], ""]
    return _write(run_dir, lines, written)


def _write(run_dir: Path, lines: list[str], written: set[str]) -> Path:
    report = run_dir / "report.md"
    atomic_write(report, lambda tmp: Path(tmp).write_text("\n".join(lines), encoding="utf-8"))
    # Plots of models no longer here would linger unlinked: remove our own stale names only.
    for old in [old for pattern in OUR_PLOTS for old in (run_dir / PLOTS).glob(pattern)]:
        if old.name not in written:
            old.unlink(missing_ok=True)
    return report
