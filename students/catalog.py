"""The catalogue the zoos register their architectures in: a name, a role and a factory of
channel plans. distill/registry.py reads it (and fits FAMILY@BUDGET names); the zoos need only
this module, so importing a zoo never imports the registry back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from students.resnet import ResNetConfig


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: str  # "teacher" or "student"
    plan: Callable[[int], ResNetConfig]  # num_classes -> channel plan
    notes: str = ""


CATALOG: dict[str, ModelEntry] = {}


def register_model(name: str, role: str, notes: str = ""):
    """Decorator: `@register_model("resnet18-5m", "student")` over `def f(num_classes) -> plan`."""
    if role not in ("teacher", "student"):
        raise ValueError(f"role must be teacher or student, got {role!r}")

    def wrap(fn: Callable[[int], ResNetConfig]) -> Callable[[int], ResNetConfig]:
        if name in CATALOG:
            raise ValueError(f"architecture {name!r} is registered twice")
        CATALOG[name] = ModelEntry(name, role, fn, notes)
        return fn

    return wrap
