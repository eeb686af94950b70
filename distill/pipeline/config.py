"""`distill pipeline` settings: a preset, then a TOML file, then flags, into one validated
`PipelineSettings` before the first stage starts.

TOML layout (every key optional; `distill pipeline --print-config` writes the resolved file):

    seed = 0
    device = "auto"
    mlflow = "sqlite:///runs.db"  # optional: track every stage in MLflow
    budget = "5M"           # the student's parameter budget
    [data]                  # DataSettings: source (or --data), val_size, train_size, ...
    [teacher]               # arch, recipe (a name), then any Recipe field: epochs = 200
    [student]               # the same; the label-only baseline uses it too
    [kd]                    # KDSettings: method, alpha, temperature, beta, warmup_epochs, ...
    [prune]                 # PruneSettings: enabled, budget, steps, epochs_per_step, epochs, ...
    [export]                # ExportSettings: int8, fp16, tta, int8_max_drop
    [bench]                 # BenchSettings: batch_sizes, seconds, threads, device
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from distill import distributed
from distill.budget import parse_budget
from distill.errors import UserError
from distill.files import loads_toml, not_a_file
from distill.recipes import get_recipe
from distill.settings import (
    BenchSettings,
    DataSettings,
    ExportSettings,
    KDSettings,
    PruneSettings,
    Recipe,
    override_recipe,
)
from distill.tracking import PIPELINE_HELP
from distill.typed import build, coerce, require, seeds, setting, to_dict


@dataclass(frozen=True)
class StageSettings:
    """A training stage: an architecture and a resolved recipe."""

    arch: str
    recipe: Recipe


@dataclass(frozen=True)
class PipelineSettings:
    teacher: StageSettings
    student: StageSettings
    data: DataSettings = setting(help="The data set and its split.", factory=DataSettings)
    budget: int | str = setting("5M", "Parameter budget of the students.")
    kd: KDSettings = setting(help="How the student learns from the teacher.", factory=KDSettings)
    prune: PruneSettings = setting(help="The prune stage.", factory=PruneSettings)
    export: ExportSettings = setting(help="The export stage.", factory=ExportSettings)
    bench: BenchSettings = setting(help="The bench stage.", factory=BenchSettings)
    seed: int = setting(0, "Seed of every training stage.")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "auto, cpu or cuda.")
    mlflow: str | None = setting(None, PIPELINE_HELP, shown="off")

    def __post_init__(self) -> None:
        seeds(self, "seed")
        require(
            self.prune.budget != "" or not self.prune.enabled,
            "prune.budget",
            "is needed when the prune stage is enabled (or set prune.enabled = false)",
        )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# Presets are plain nested tables so a TOML file overrides them key by key.
PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo on CIFAR-10: about 13 minutes from a fresh clone on 2 Zen 5 cores (native bf16),
    # more on older CPUs (README: What each minute buys, for the epochs' price). On a CPU a wider
    # teacher costs more per image than the student's whole training step, so the teacher is
    # the student's own architecture trained three times as long ("born-again" distillation,
    # Furlanello et al. 2018). Measured at this scale, 45,000 images (README: Results): a 12-epoch
    # teacher (84.5%) lifts 4-epoch students more than an 8-epoch one (82.5%): +3.1 vs +2.8
    # points over labels only; more student epochs narrow the gap instead (5: +2.3, 6: +1.7).
    # Students take lr 0.4: distillation's soft targets let a student use the higher rate
    # (80.0% -> 81.5%) while the label-only baseline gains nothing from it (76.9% -> 76.7%).
    # The student's 5th epoch is the speed bought back as accuracy: 80.8% -> 81.2% for about a
    # minute (its own epoch and the baseline's, which follows the student's recipe).
    "quick": {
        "teacher": {"arch": "resnet18-quarter", "recipe": "quick", "epochs": 12},
        # An lr in a preset is tuned at a batch, which it names: a file that changes only the
        # batch then scales the lr with it, as it would the recipe's own.
        "student": {
            "arch": "resnet18-quarter",
            "recipe": "quick",
            "epochs": 5,
            "lr": 0.4,
            "lr_batch": 256,
        },
        "kd": {"method": "hinton"},
        "prune": {"budget": "0.45M", "steps": 1, "epochs_per_step": 0, "epochs": 1},
        "export": {"int8": True},
        # Short blocks: every engine and precision is timed per batch size in the demo.
        "bench": {"batch_sizes": [1, 32], "seconds": 0.25},
    },
    # The GPU run for the real result: a ResNet34 teacher and a 5M student, standard recipe.
    "standard": {
        "teacher": {"arch": "resnet34", "recipe": "standard", "epochs": 200},
        "student": {"arch": "resnet18-5m", "recipe": "standard", "epochs": 200},
        "kd": {"method": "hinton"},
        "prune": {"budget": "2.5M", "steps": 4, "epochs_per_step": 5, "epochs": 60},
        "export": {"int8": True},
    },
}


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            out[key] = merge(base[key], value)
        else:
            out[key] = value
    return out


def _label(where: str, key: str) -> str:
    """How a key is named in messages: `kd.alpha`, or `kd.alpha (my.toml)`."""
    key = key or "the config"
    return f"{key} ({where})" if where else key


def _stage(name: str, table: Any, where: str) -> StageSettings:
    """[teacher]/[student]: arch, recipe (a name), and any Recipe field as an override."""
    if not isinstance(table, Mapping):
        raise UserError(f"{_label(where, name)} must be a table, e.g. [{name}]")
    values = dict(table)
    label = lambda key: _label(where, f"{name}.{key}")  # noqa: E731
    arch = coerce(values.pop("arch", None), str, "arch", label)
    recipe_name = coerce(values.pop("recipe", None), str, "recipe", label)
    base = get_recipe(recipe_name)
    overrides = {"name": recipe_name, **values}
    if name == "teacher":  # a model trained to teach: see distill.recipes.teacher_recipe
        overrides = {"label_smoothing": base.teacher_label_smoothing, **overrides}
    # The same rule as --lr: an lr in the file is the lr of this run's global batch.
    recipe = override_recipe(base, overrides, distributed.world_size(), label=label)
    return StageSettings(arch, recipe)


def _from_sweep(values: dict[str, Any], where: str) -> dict[str, Any]:
    """`[student] from_sweep = "runs/sweep"`: the sweep winner's architecture, recipe and KD
    settings replace the student's and [kd]'s (keys the sweep did not search stay)."""
    student = values.get("student")
    if not isinstance(student, Mapping) or "from_sweep" not in student:
        return values
    from distill.sweep.results import as_pipeline_tables, winner

    folder = coerce(
        student["from_sweep"], str, "from_sweep", lambda k: _label(where, f"student.{k}")
    )
    _, params = winner(Path(folder).expanduser())
    rest = {k: v for k, v in student.items() if k != "from_sweep"}
    return merge({**values, "student": rest}, as_pipeline_tables(params))


def parse(values: Mapping[str, Any], where: str = "") -> PipelineSettings:
    """PipelineSettings from nested tables (a preset merged with a TOML file and flags)."""
    values = dict(values)
    known = {f.name for f in fields(PipelineSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"unknown pipeline setting {_label(where, unknown[0])}; valid ones: "
            f"{', '.join(sorted(known))}"
        )
    values = _from_sweep(values, where)
    for stage in ("teacher", "student"):
        if stage not in values:
            raise UserError(f"the pipeline needs a [{stage}] table (arch and recipe)")
        values[stage] = _stage(stage, values[stage], where)
    settings = build(
        PipelineSettings, values, label=lambda key: _label(where, key), unknown="error"
    )
    validate(settings)
    return settings


def validate(s: PipelineSettings) -> None:
    """What types and ranges cannot say: names exist, budgets parse and nest, stages fit."""
    import torch

    from distill.budget import check_budget
    from distill.registry import create_model, get_entry

    budget = parse_budget(s.budget)
    for name in ("teacher", "student"):
        get_entry(getattr(s, name).arch)
    with torch.device("meta"):
        check_budget(create_model(s.student.arch), budget, f"student {s.student.arch}")
    if s.prune.enabled:
        prune_budget = parse_budget(s.prune.budget)
        if prune_budget >= budget:
            raise UserError(
                f"prune budget {s.prune.budget} is not below the student budget {s.budget}; "
                "lower it, or set prune.enabled = false to skip pruning"
            )
    if not s.data.source:
        raise UserError("no data given; pass --data (cifar10, cifar100 or a folder)")


def load_config(
    preset: str, config_file: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> PipelineSettings:
    """The preset, then the TOML file's values, then `overrides` (flags, as nested tables)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[preset])
    where = ""
    if config_file is not None:
        config_file = Path(config_file)
        if why := not_a_file(config_file):
            raise UserError(f"config file {config_file} {why}; pass a TOML file")
        try:
            values = _layer(values, loads_toml(config_file.read_text()))
        except ValueError as e:  # TOML's errors, undecodable bytes, nesting past the stack
            raise UserError(f"{config_file} is not valid TOML: {e}") from None
        where = config_file.name
    values = _layer(values, overrides or {})
    return parse(values, where)


def _layer(values: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """`layer` over `values`. An lr the layer gives without its batch is the lr of this run's
    global batch (the rule of --lr), never the batch a lower layer's lr was tuned at."""
    values = dict(values)
    for stage in ("teacher", "student"):
        given, below = layer.get(stage), values.get(stage)
        lr_alone = isinstance(given, Mapping) and "lr" in given and "lr_batch" not in given
        if lr_alone and isinstance(below, Mapping):
            values[stage] = {k: v for k, v in below.items() if k != "lr_batch"}
    return merge(values, layer)


# ---------------------------------------------------------------------------------------------
# Writing TOML back (--print-config) and documenting every key


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(s: PipelineSettings) -> str:
    """The resolved settings as a TOML file that `--config` reads back to the same settings."""
    d = s.to_dict()
    for stage in ("teacher", "student"):
        recipe = d[stage].pop("recipe")
        d[stage] = {"arch": d[stage]["arch"], "recipe": recipe.pop("name"), **recipe}
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) and v is not None}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in values.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", d)
    return "\n".join(lines).lstrip("\n") + "\n"


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every pipeline TOML key: the README's table. A default
    is a TOML value, or a description in italics (_the recipe's_), or "—" for none."""
    from distill.typed import type_name  # one description of each type

    rows = []

    def walk(cls: type, prefix: str, default_of=None) -> None:
        import typing

        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if cls is PipelineSettings and f.name in ("data", "teacher", "student"):
                continue
            if cls is Recipe and f.name == "name":  # given as `recipe = "..."`
                continue
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.", default_of)
                continue
            if default_of is not None or f.metadata.get("shown"):
                default = f"_{default_of or f.metadata['shown']}_"
            elif f.default is dataclasses.MISSING or f.default is None:
                default = "—"
            else:
                default = _toml_value(f.default)
            rows.append((f"{prefix}{f.name}", type_name(tp), default, f.metadata.get("help", "")))

    walk(PipelineSettings, "")
    walk(DataSettings, "data.")
    rows.append(
        ("teacher.arch / student.arch", "a string", "preset", "Architecture name or FAMILY@BUDGET.")
    )
    rows.append(
        (
            "student.from_sweep",
            "a path",
            "—",
            "A distill sweep folder: its winner's architecture, recipe and KD settings replace "
            "the student's and [kd]'s (the confirmed winner, else the best trial).",
        )
    )
    rows.append(
        (
            "teacher.recipe / student.recipe",
            "a string",
            "preset",
            "Named recipe; any Recipe field below may follow it in the same table.",
        )
    )
    walk(Recipe, "teacher/student.", "the recipe's")
    return rows
