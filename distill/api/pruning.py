"""Pruning from Python: a checkpoint cut to a parameter budget, distilling while it recovers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.console import Console

from distill.api.args import (
    DATA_FIELDS,
    RECIPE_FIELDS,
    RUN_FIELDS,
    PathLike,
    budget_text,
    kd_settings,
    model_data,
    paths,
    progress_console,
    recipe_of,
    run_settings,
    split_overrides,
)
from distill.data import Dataset
from distill.errors import UserError
from distill.settings import DataSettings, KDSettings, PruneSettings, Recipe, RunSettings, build


def prune(
    model: PathLike,
    budget: str | int | PruneSettings,
    out: PathLike | None = None,
    *,
    teacher: PathLike | Sequence[PathLike] | None = None,
    data: PathLike | DataSettings | Dataset | None = None,
    kd: str | Mapping[str, Any] | KDSettings | None = None,
    recipe: str | Recipe | None = None,
    run: RunSettings | None = None,
    quiet: bool = True,
    console: Console | None = None,
    provenance: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Prune the checkpoint `model` to `budget` parameters, distilling from `teacher` (default:
    the unpruned model itself) between steps and while it recovers; return the pruned
    checkpoint, written to `out`. `recipe`, the training subsample and the image size default
    to the model's own.

    `budget`: "2.5M", or PruneSettings whole. Overrides: PruneSettings fields (`steps`,
    `epochs_per_step`, `importance`, `round_to`, and `epochs`: the recovery epochs), then
    recipe, data and run fields, as `distill prune` takes them. `kd` as in `train_student`.
    """
    from distill.checkpoint import load_checkpoint
    from distill.pruning import prune_checkpoint
    from distill.recipes import model_recipe
    from distill.settings import PRUNE_CARRIES

    prune_fields = tuple(
        f.name for f in fields(PruneSettings) if f.name not in ("budget", "enabled")
    )
    given = split_overrides(
        overrides,
        "prune",
        prune=prune_fields,
        recipe=tuple(n for n in RECIPE_FIELDS if n != "epochs"),  # `epochs` is the recovery's
        data=DATA_FIELDS,
        run=RUN_FIELDS,
    )
    if isinstance(budget, PruneSettings):
        settings = build(PruneSettings, given["prune"], base=budget) if given["prune"] else budget
    else:
        settings = build(PruneSettings, {"budget": budget_text(budget), **given["prune"]})
    if not settings.budget:
        raise UserError("no budget given; pass the pruned model's budget, e.g. --budget 2.5M")
    run = run_settings(out, quiet, given["run"], run)
    if run.out is None:
        raise UserError("prune writes a checkpoint: pass out, e.g. out='runs/p.pt'")
    src = load_checkpoint(model)
    return prune_checkpoint(
        model,
        settings,
        data=model_data(Path(model), str(model), data, given["data"], PRUNE_CARRIES),
        recipe=recipe_of(recipe or model_recipe(src), given["recipe"]),
        run=run,
        kd=kd_settings(kd),
        teacher_paths=paths(teacher, "teacher") if teacher else [],
        console=console or progress_console(run.quiet),
        provenance=dict(provenance) if provenance else None,
    )
