"""What the API's functions share: keyword overrides sorted into their settings objects, and
the plain values (paths, names, budgets) turned into settings, each checked like a flag."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.console import Console

from distill.budget import parse_budget
from distill.console import make_console
from distill.data import Dataset
from distill.errors import UserError
from distill.settings import (
    DataSettings,
    KDSettings,
    Recipe,
    RunSettings,
    build,
    data_for_model,
)

PathLike = str | os.PathLike

# The fields a keyword override may name, per settings class. Each function's own parameters
# (the data source, the output, quiet, the recipe's name) are not overrides.
RECIPE_FIELDS = tuple(f.name for f in fields(Recipe) if f.name != "name")
DATA_FIELDS = tuple(f.name for f in fields(DataSettings) if f.name != "source")
RUN_FIELDS = tuple(f.name for f in fields(RunSettings) if f.name not in ("out", "quiet"))
# What `distill eval --data ...` takes: the split is the model's, the rest says where data is.
EVAL_DATA_FIELDS = ("val_size", "split_seed", "data_root", "cache_dir")


def split_overrides(
    overrides: Mapping[str, Any], what: str, **groups: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Keyword overrides by settings group; the first group naming a field takes it."""
    owner: dict[str, str] = {}
    for group, names in groups.items():
        for name in names:
            owner.setdefault(name, group)
    out: dict[str, dict[str, Any]] = {group: {} for group in groups}
    for key, value in overrides.items():
        if key not in owner:
            close = difflib.get_close_matches(key, owner, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(
                f"{what}() has no setting {key!r}; {hint}valid ones: {', '.join(sorted(owner))}"
            )
        out[owner[key]][key] = value
    return out


def run_settings(
    out: PathLike | None,
    quiet: bool,
    given: Mapping[str, Any],
    run: RunSettings | None = None,
) -> RunSettings:
    from distill.progress import check_tensorboard

    values = {**given, **({"out": out} if out is not None else {})}
    if run is None:
        run = build(RunSettings, {"out": out, "quiet": quiet, **given})
    elif values:  # overrides on settings given whole are type-checked like the rest
        run = build(RunSettings, values, base=run)
    if run.tensorboard is not None:
        check_tensorboard()  # before any data is decoded or a lock taken
    return run


def progress_console(quiet: bool) -> Console:
    # Progress and epoch lines go to stderr: stdout belongs to the caller's program.
    return make_console(quiet, stderr=True)


def source(data: PathLike) -> str:
    if not isinstance(data, (str, os.PathLike)) or not str(data):
        raise UserError(f"data must be cifar10, cifar100 or a folder, got {data!r}")
    return str(data)


def data_settings(data: Any, given: Mapping[str, Any]) -> DataSettings | Dataset:
    """Data settings from a source (and overrides), or the settings or dataset given whole."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, DataSettings):
        return build(DataSettings, given, base=data) if given else data
    return build(DataSettings, {"source": source(data), **given})


def model_data(
    path: Path, what: str, data: Any, given: Mapping[str, Any], carries: Any = None
) -> DataSettings | Dataset:
    """A model's own data and split (a teacher's, a model to prune) unless told otherwise:
    a student validates on its teacher's validation split, never on its training images."""
    if isinstance(data, (DataSettings, Dataset)):
        return data_settings(data, given)
    from distill.checkpoint import load_checkpoint

    recorded = load_checkpoint(path).get("data") or {}
    if carries is None:
        return data_for_model(recorded, with_source(given, data), what)
    return data_for_model(recorded, with_source(given, data), what, carries)


def recipe_of(recipe: str | Recipe, given: Mapping[str, Any]) -> Recipe:
    from distill.recipes import make_recipe

    return make_recipe(recipe, **given) if given or isinstance(recipe, str) else recipe


def with_source(given: Mapping[str, Any], data: PathLike | None) -> dict[str, Any]:
    return dict(given) if data is None else {"source": source(data), **given}


def paths(value: PathLike | Sequence[PathLike], what: str) -> list[Path]:
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    if not items:
        raise UserError(f"no {what} given; pass a checkpoint path (or a list of them)")
    return [Path(p) for p in items]


def kd_settings(kd: str | Mapping[str, Any] | KDSettings | None) -> KDSettings:
    if kd is None or isinstance(kd, KDSettings):
        return kd or KDSettings()
    values = {"method": kd} if isinstance(kd, str) else kd
    return build(KDSettings, values, label=lambda name: f"kd {name}")


def stem_name(stem: str) -> str:
    if stem not in ("auto", "cifar", "imagenet"):
        raise UserError(f"stem must be auto, cifar or imagenet, got {stem!r}")
    return stem


def budget_text(budget: str | int) -> str:
    """PruneSettings keeps the budget as written; parse it now so a mistake names `budget`."""
    parse_budget(budget)
    return str(budget)
