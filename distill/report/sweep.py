"""The report's sweep section (`distill report runs/sweep`): the trials table, the best trial or
the Pareto front, the confirmation, and the sweep's plots, the same as `distill sweep --show`."""

from __future__ import annotations

from pathlib import Path

from distill.report.output import PLOTS


def is_sweep_folder(run_dir: Path) -> bool:
    from distill.sweep.results import is_sweep

    return is_sweep(run_dir)


def has_models(run_dir: Path) -> bool:
    """Whether the folder itself holds models (a sweep's are in its trial folders)."""
    return any(
        not p.name.endswith(".last.pt") for p in [*run_dir.glob("*.pt"), *run_dir.glob("*.onnx")]
    )


def sweep_section(run_dir: Path, plots: Path) -> tuple[list[str], list[Path | None]]:
    """Markdown lines and the PNGs written (`sweep_*.png`); nothing for a folder that holds no
    sweep."""
    if not is_sweep_folder(run_dir):
        return [], []
    from distill.sweep import results

    job, study = results.load(run_dir)
    objective = job["settings"]["objective"]
    columns, rows = results.table(study, objective)
    lines = ["## Sweep", "", f"Objective `{objective}`, {len(rows)} trials; study in "
             f"`{job['settings'].get('storage') or 'study.log'}`.", ""]  # fmt: skip
    lines += [f"- {line}" for line in results.summary(study, run_dir, objective)] + [""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    lines.append("")
    pngs: list[Path | None] = list(results.plots(study, plots, prefix="sweep_"))
    for png in pngs:
        title = png.stem.removeprefix("sweep_").replace("_", " ")
        lines += [f"![sweep: {title}]({PLOTS}/{png.name})", ""]
    return lines, pngs
