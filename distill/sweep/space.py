"""A sweep's search space: a TOML `[space]` table over architectures, the recipe, augmentation
and distillation, typed and checked like every other setting before the first trial.

    [space]
    arch = ["resnet18@0.2M", "resnet18@0.4M"]   # a choice list
    lr = { low = 0.05, high = 0.8, log = true }  # a range, sampled on a log scale
    batch_size = { low = 64, high = 256, step = 64 }
    epochs = 2                                   # a fixed value
    recipe = "quick"                             # the named recipe the others override
    [space.augment]
    cutout = [0, 8]
    [space.kd]
    temperature = { low = 1, high = 8 }

Every value a dimension can take is built into its settings class (`Recipe`, `AugmentSettings`,
`KDSettings`) through `distill.typed.build`, so a trial can never meet a value that `distill
student` would have refused: a wrong type, range, key or choice is one line naming the key.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from distill.errors import UserError
from distill.recipes import RECIPES, get_recipe, make_recipe
from distill.settings import AugmentSettings, KDSettings, Recipe
from distill.typed import build, type_name

# Recipe fields a space may not set: the recipe's name is `recipe`, `lr_batch` follows the
# batch (an explicit lr is the lr of the trial's global batch), augmentation is its own table.
# A trial is a student or a label-only model: a teacher's smoothing never applies.
NOT_SEARCHED = ("name", "lr_batch", "augment", "teacher_label_smoothing")
TABLES: dict[str, type] = {"augment": AugmentSettings, "kd": KDSettings}
RANGE_KEYS = ("low", "high", "log", "step")
Kind = Literal["float", "int", "choice", "fixed"]


@dataclass(frozen=True)
class Dimension:
    """One searched (or fixed) setting. `name` is how a trial's params call it: `lr`,
    `augment.cutout`, `kd.temperature`, `arch`, `recipe`."""

    name: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def value(self) -> Any:
        """A fixed dimension's value."""
        return self.choices[0]

    def suggest(self, trial: Any) -> Any:
        """This dimension's value for an Optuna trial (a fixed one is recorded as a one-choice
        categorical, so the trials table and the importances see every setting alike)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=step
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self) -> str:
        if self.kind in ("float", "int"):
            how = " log" if self.log else (f" step {self.step:g}" if self.step else "")
            return f"{self.low:g} .. {self.high:g}{how}"
        if self.kind == "fixed":
            return str(self.value)
        return " | ".join(map(str, self.choices))


@dataclass(frozen=True)
class SearchSpace:
    dims: tuple[Dimension, ...]

    def __getitem__(self, name: str) -> Dimension:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def sample(self, trial: Any) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dims}

    def to_record(self) -> dict[str, Any]:
        """Plain values: the sweep's identity (two sweeps on one folder must share it)."""
        return {
            d.name: {"kind": d.kind, "low": d.low, "high": d.high, "log": d.log, "step": d.step,
                     "choices": list(d.choices)}
            for d in self.dims
        }  # fmt: skip

    def max_epochs(self) -> int:
        if "epochs" in self.names():
            d = self["epochs"]
            return int(d.high) if d.kind == "int" else int(max(d.choices))
        return get_recipe((self.base_recipes() or ["standard"])[0]).epochs

    def base_recipes(self) -> list[str]:
        return list(self["recipe"].choices) if "recipe" in self.names() else []


@dataclass(frozen=True)
class TrialSettings:
    """What one trial trains: its architecture, recipe and KD settings, resolved."""

    arch: str
    recipe: Recipe
    kd: KDSettings


def resolve(params: Mapping[str, Any], default_recipe: str) -> TrialSettings:
    """A trial's params (from `SearchSpace.sample`) as settings objects."""
    base = get_recipe(params.get("recipe", default_recipe))
    recipe_values = {
        k: v for k, v in params.items() if "." not in k and k not in ("arch", "recipe")
    }
    augment = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("augment.")}
    kd = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("kd.")}
    recipe = make_recipe(base, **recipe_values, augment=replace(base.augment, **augment))
    return TrialSettings(
        arch=str(params["arch"]),
        recipe=recipe,
        kd=build(KDSettings, kd, label=lambda n: f"space kd.{n}"),
    )


# ---------------------------------------------------------------------------------------------
# Reading and checking a [space] table


def parse_space(table: Any, where: str) -> SearchSpace:
    """Check every key and value of a `[space]` table; `where` names the file in messages."""
    if not isinstance(table, Mapping) or not table:
        raise UserError(f"{where} has no [space] table; write one, e.g. [space] arch = [...]")
    if "arch" not in table:
        raise UserError(f'{where}: [space] needs arch, e.g. arch = ["resnet18@0.4M"]')
    dims: list[Dimension] = []
    for key, value in table.items():
        if key in TABLES:
            if not isinstance(value, Mapping):
                raise UserError(f"{where}: space {key} must be a table, e.g. [space.{key}]")
            cls = TABLES[key]
            for sub, v in value.items():
                dims.append(_dimension(f"{key}.{sub}", v, cls, sub, where))
        else:
            dims.append(_dimension(key, value, Recipe, key, where))
    space = SearchSpace(tuple(dims))
    _check_together(space, where)
    return space


def _dimension(name: str, value: Any, cls: type, field: str, where: str) -> Dimension:
    label = f"{where}: space {name}"
    if name == "arch":
        dim = _choices(name, value, label, str)
        for arch in dim.choices:
            _check_arch(arch, label)
        return dim
    if name == "recipe":
        dim = _choices(name, value, label, str)
        for r in dim.choices:
            if r not in RECIPES:
                raise UserError(f"{label}: unknown recipe {r!r}; choose from {', '.join(RECIPES)}")
        return dim
    names = [f.name for f in fields(cls) if f.name not in NOT_SEARCHED]
    if field not in names:
        close = difflib.get_close_matches(field, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
        valid = ", ".join(prefix + n for n in names)
        extra = "" if prefix else ", [space.augment] and [space.kd] tables"
        raise UserError(
            f"{label} is not a setting a sweep can search; {hint}valid: arch, recipe, "
            f"{valid}{extra}"
        )
    tp = _plain_type(typing.get_type_hints(cls)[field])
    if isinstance(value, Mapping):
        dim = _range(name, value, tp, label)
        checked = [dim.low, dim.high]
    else:
        dim = _choices(name, value, label, None)
        checked = list(dim.choices)
    for v in checked:  # the same checks `distill student` makes of a flag
        build(cls, {field: v}, base=_base(cls), label=lambda n: f"{label} value")
    return dim


def _base(cls: type) -> Any:
    # KD's alpha is a fraction for Hinton and not for DKD: check against the most lenient.
    return KDSettings(method="dkd") if cls is KDSettings else cls()


def _plain_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args and typing.get_origin(tp) is not Literal else tp


def _choices(name: str, value: Any, label: str, item: type | None) -> Dimension:
    if isinstance(value, list):
        if not value:
            raise UserError(f"{label}: an empty choice list; give at least one value")
        if len(set(map(repr, value))) != len(value):
            raise UserError(f"{label}: a choice is listed twice in {value}")
        bad = [v for v in value if isinstance(v, (list, dict))]
        if bad:
            raise UserError(f"{label}: choices must be plain values, got {bad[0]!r}")
        kind: Kind = "choice" if len(value) > 1 else "fixed"
        choices = tuple(value)
    elif isinstance(value, (list, dict)):
        raise UserError(f"{label} must be a value, a choice list or {{ low, high }}")
    else:
        kind, choices = "fixed", (value,)
    if item is not None:
        for v in choices:
            if not isinstance(v, item):
                raise UserError(f"{label} must name {type_name(item)}s, got {v!r}")
    return Dimension(name, kind, choices=choices)


def _range(name: str, value: Mapping[str, Any], tp: Any, label: str) -> Dimension:
    unknown = sorted(set(value) - set(RANGE_KEYS))
    if unknown:
        raise UserError(
            f"{label}: unknown range key {unknown[0]!r}; a range is {{ low, high }} with "
            "optional log = true or step"
        )
    if "low" not in value or "high" not in value:
        raise UserError(f"{label}: a range needs low and high, e.g. {{ low = 0.05, high = 0.8 }}")
    if tp not in (int, float):
        raise UserError(f"{label} is {type_name(tp)}: give a value or a choice list, not a range")
    low, high, log, step = value["low"], value["high"], value.get("log", False), value.get("step")
    for k, v in (("low", low), ("high", high), ("step", step)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{label}: {k} must be a number, got {v!r}")
        if tp is int and not isinstance(v, int):
            raise UserError(f"{label}: {k} must be an integer ({name} is one), got {v!r}")
    if not isinstance(log, bool):
        raise UserError(f"{label}: log must be true or false, got {log!r}")
    if not low < high:
        raise UserError(f"{label}: low {low} must be below high {high}")
    if log and step is not None:
        raise UserError(f"{label}: a range is sampled on a log scale or in steps, not both")
    if log and low <= 0:
        raise UserError(f"{label}: a log range needs low above 0, got {low}")
    if step is not None and (step <= 0 or step > high - low):
        raise UserError(f"{label}: step {step} must be above 0 and at most high - low")
    kind: Kind = "int" if tp is int else "float"
    return Dimension(name, kind, low=low, high=high, log=log, step=step)


def _check_arch(arch: str, label: str) -> None:
    from distill.registry import get_entry

    try:
        get_entry(arch)
    except UserError as e:
        raise UserError(f"{label}: {e}") from None


def _check_together(space: SearchSpace, where: str) -> None:
    """Checks across dimensions: each KD method's own ranges."""
    methods = space["kd.method"].choices if "kd.method" in space.names() else ("hinton",)
    if "kd.alpha" in space.names():
        alpha = space["kd.alpha"]
        top = alpha.high if alpha.kind in ("float", "int") else max(alpha.choices)
        if "hinton" in methods and top > 1:
            raise UserError(
                f"{where}: space kd.alpha reaches {top} but Hinton's alpha is a fraction; keep "
                'it at most 1 or search kd.method = "dkd" only'
            )


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, forms, meaning) of every key a space file may hold: the README's table."""
    from distill.sweep.settings import SweepSettings

    rows = [
        ("[space] arch", "string", "value, list", "A registered architecture or FAMILY@BUDGET "
         "(resnet18@0.4M, resnet18@5M,600MMAC); each is checked against the budget before it "
         "trains."),
        ("[space] recipe", "string", "value, list",
         f"The named recipe the other keys override: {', '.join(RECIPES)}."),
    ]  # fmt: skip
    for prefix, cls in (("[space] ", Recipe), ("[space.augment] ", AugmentSettings),
                        ("[space.kd] ", KDSettings)):  # fmt: skip
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in NOT_SEARCHED:
                continue
            tp = _plain_type(hints[f.name])
            forms = "value, list, {low, high, log, step}" if tp in (int, float) else "value, list"
            rows.append((prefix + f.name, type_name(tp), forms, f.metadata.get("help", "")))
    hints = typing.get_type_hints(SweepSettings)
    for f in fields(SweepSettings):
        shown = f.metadata.get("shown") or ("none" if f.default is None else str(f.default))
        rows.append((f"[sweep] {f.name}", type_name(_plain_type(hints[f.name])),
                     f"default {shown}", f.metadata.get("help", "")))  # fmt: skip
    return rows
