"""One registry for every architecture, teacher or student.

Factories live in `teachers/zoo.py` and `students/zoo.py`; both are imported explicitly by
`_ensure_loaded` so registration never depends on which module a caller imported first.
A `FAMILY@BUDGET` name (`distill/fit.py`) resolves here too, to its family fitted to the budget,
so every path that takes a registered name takes a fitted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from distill.errors import UserError
from distill.fit import fit_plan, is_fitted, parse_fit_name, plan_cost
from distill.memory import MAX_PARAMS, require
from students.resnet import CifarResNet, ResNetConfig


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: str  # "teacher" or "student"
    plan: Callable[[int], ResNetConfig]  # num_classes -> channel plan
    notes: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, role: str, notes: str = ""):
    """Decorator: `@register_model("resnet18-5m", "student")` over `def f(num_classes) -> plan`."""
    if role not in ("teacher", "student"):
        raise ValueError(f"role must be teacher or student, got {role!r}")

    def wrap(fn: Callable[[int], ResNetConfig]) -> Callable[[int], ResNetConfig]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, role, fn, notes)
        return fn

    return wrap


def _ensure_loaded() -> None:
    import students.zoo  # noqa: F401
    import teachers.zoo  # noqa: F401


def list_models(role: str | None = None) -> list[str]:
    _ensure_loaded()
    return [n for n, e in _REGISTRY.items() if role is None or e.role == role]


def get_entry(name: str) -> ModelEntry:
    """The entry of a registered or fitted name; a UserError listing the names when unknown (or
    when a fitted name's family, budget or MAC ceiling is wrong)."""
    _ensure_loaded()
    if is_fitted(name):
        return _fitted_entry(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)} "
            "(or fit one to a budget: FAMILY@BUDGET, like resnet18@5M)"
        ) from None


def _fitted_entry(name: str) -> ModelEntry:
    spec = parse_fit_name(name)
    family = _REGISTRY.get(spec.family)
    if family is None:
        raise UserError(
            f"unknown family {spec.family!r} in {name!r}; choose one of: {', '.join(_REGISTRY)}"
        )
    entry = ModelEntry(
        name,
        family.role,
        lambda num_classes: fit_plan(spec, family.plan(num_classes)),
        f"{spec.family} fitted to {spec.budget:,} parameters",
    )
    # Fit now, so a budget below the family's smallest plan fails before any work starts.
    entry.plan(10)
    return entry


def model_config(name: str, num_classes: int = 10) -> ResNetConfig:
    return get_entry(name).plan(num_classes)


def create_model(name: str, num_classes: int = 10) -> CifarResNet:
    return _built(model_config(name, num_classes), f"--arch {name}")


def build_model(config: ResNetConfig | dict) -> CifarResNet:
    """Rebuild a model from a channel plan (a checkpoint's `model_config`)."""
    if isinstance(config, dict):
        config = ResNetConfig.from_dict(config)
    return _built(config, "the recorded channel plan")


def _built(config: ResNetConfig, what: str) -> CifarResNet:
    """The model, once its size (counted from the plan, nothing allocated) is known to fit."""
    if torch.get_default_device().type != "meta":
        params = plan_cost(config)[0]
        if params > MAX_PARAMS:
            raise UserError(
                f"{what} has {params:,} parameters, more than the {MAX_PARAMS:,} a model may "
                "have; choose a smaller model"
            )
        require(params * 4, f"{what} ({params:,} parameters)", "choose a smaller model")
    return CifarResNet(config)
