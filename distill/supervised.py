"""Training from labels alone: teachers, and the label-only baselines a KD student is measured
against (same architecture, recipe and epochs; only the objective differs)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from distill.data import Dataset, DataSettings, load_data
from distill.device import seed_everything
from distill.registry import create_model, get_entry
from distill.runs import training_run
from distill.settings import Recipe, RunSettings
from distill.stems import choose_stem
from distill.train import fit


def train_on_labels(
    arch: str,
    data: DataSettings | Dataset,
    recipe: Recipe,
    run: RunSettings,
    *,
    kind: str = "teacher",
    console: Console | None = None,
    stop_after_steps: int | None = None,
    provenance: dict[str, Any] | None = None,
    stem: str = "auto",
) -> dict[str, Any]:
    """Train `arch` on labels alone; return its checkpoint (also written to `run.out`).

    `kind`: "teacher", or "student" for a label-only baseline. `provenance`: the pipeline stage
    that asked for it (recorded in the checkpoint). `stem`: auto, cifar or imagenet
    (distill/stems.py). A teacher's recipe should not
    smooth labels as the recipe says for teachers (distill.recipes.teacher_recipe).
    """
    with training_run(run, lambda: get_entry(arch)):
        dataset = data if isinstance(data, Dataset) else load_data(data)
        seed_everything(run.seed)
        model = create_model(arch, dataset.num_classes, choose_stem(stem, dataset.input_size[1]))
        return fit(
            model,
            dataset,
            recipe,
            run,
            kind=kind,
            arch=arch,
            meta={"pipeline": provenance} if provenance else None,
            console=console,
            stop_after_steps=stop_after_steps,
        )
