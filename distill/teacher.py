"""Train any registered architecture from labels alone (teachers, and label-only baselines)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from distill.checkpoint import check_output
from distill.data import DataConfig, Dataset, load_data
from distill.errors import UserError
from distill.recipes import Recipe
from distill.registry import create_model, get_entry
from distill.train import RunConfig, fit, seed_everything


def check_run_inputs(arch: str, run: RunConfig) -> None:
    """Everything checkable before data is loaded: the name exists, the output may be written."""
    try:
        get_entry(arch)
    except KeyError as e:
        raise UserError(e.args[0]) from None
    if run.out is not None and not run.resume:
        check_output(run.out, run.force)


def train_teacher(
    arch: str,
    data: DataConfig | Dataset,
    recipe: Recipe,
    run: RunConfig,
    *,
    console: Console | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train `arch` on labels alone and return its checkpoint (also written to `run.out`)."""
    check_run_inputs(arch, run)
    dataset = data if isinstance(data, Dataset) else load_data(data)
    seed_everything(run.seed)
    model = create_model(arch, dataset.num_classes)
    return fit(model, dataset, recipe, run, console=console, stop_after_steps=stop_after_steps)
