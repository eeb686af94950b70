"""One registry for every architecture, teacher or student.

Factories live in `teachers/zoo.py` and `students/zoo.py`, registered with
`students.catalog.register_model`; both zoos are imported explicitly by `_ensure_loaded` so
registration never depends on which module a caller imported first. The zoos never import this
module: imports run one way, registry -> zoos -> catalog.
A `FAMILY@BUDGET` name (`distill/sizing.py`) resolves here too, to its family fitted to the budget,
so every path that takes a registered name takes a fitted one.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from distill.errors import UserError
from distill.memory import MAX_PARAMS, require
from distill.sizing import fit_plan, is_fitted, parse_fit_name, plan_cost
from students.catalog import CATALOG, ModelEntry
from students.resnet import CifarResNet, ResNetConfig


def _ensure_loaded() -> None:
    import students.zoo  # noqa: F401
    import teachers.zoo  # noqa: F401


def list_models(role: str | None = None) -> list[str]:
    _ensure_loaded()
    return [n for n, e in CATALOG.items() if role is None or e.role == role]


def get_entry(name: str) -> ModelEntry:
    """The entry of a registered or fitted name; a UserError listing the names when unknown (or
    when a fitted name's family, budget or MAC ceiling is wrong)."""
    _ensure_loaded()
    if is_fitted(name):
        return _fitted_entry(name)
    try:
        return CATALOG[name]
    except KeyError:
        raise UserError(
            f"unknown architecture {name!r}; choose one of: {', '.join(CATALOG)} "
            "(or fit one to a budget: FAMILY@BUDGET, like resnet18@5M)"
        ) from None


def _fitted_entry(name: str) -> ModelEntry:
    spec = parse_fit_name(name)
    family = CATALOG.get(spec.family)
    if family is None:
        raise UserError(
            f"unknown family {spec.family!r} in {name!r}; choose one of: {', '.join(CATALOG)}"
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


def create_model(name: str, num_classes: int = 10, stem: str = "cifar") -> CifarResNet:
    """The registered (or fitted) `name` with `stem` ("cifar" or "imagenet", see
    distill/stems.py); the channel plan is the same for both."""
    return _built(replace(model_config(name, num_classes), stem=stem), f"--arch {name}")


def build_model(config: ResNetConfig | dict) -> nn.Module:
    """Rebuild a model from a channel plan (a checkpoint's `model_config`), or from the name of
    an imported torchvision/timm architecture (teachers/imported.py)."""
    from teachers.imported import build_imported, is_imported

    if isinstance(config, dict) and is_imported(config):
        return build_imported(config)
    if isinstance(config, dict):
        config = ResNetConfig.from_dict(config)
    return _built(config, "the recorded channel plan")


# What pruning appends to its source's name: "resnet18-quarter-pruned" is a plan no wider and no
# deeper than resnet18-quarter's, with the widths the pruner chose.
PRUNED = "-pruned"


def label_disagrees(arch: str, config: ResNetConfig) -> str | None:
    """Why `arch`, the name a checkpoint records, is not a name of its channel plan `config`, or
    None. A registered or fitted name must be that plan (any stem); NAME-pruned must be NAME's
    blocks with no layer wider. A name the registry does not know (a plan built in code) claims
    no plan, so it is not checked."""
    base = arch.removesuffix(PRUNED)
    if not is_fitted(base) and base not in list_models():
        return None
    try:
        claimed = replace(get_entry(base).plan(config.num_classes), stem=config.stem)
    except UserError:
        return f"arch says {arch}, which names no channel plan"
    if config == claimed or (arch != base and _pruned_from(config, claimed)):
        return None
    shown = plan_name(config)
    what = (
        f"{shown}'s channel plan"
        if shown
        else f"{config.block} blocks {list(config.blocks)} of widths {list(config.widths)}"
    )
    return f"arch says {arch}, but its weights are {what}"


def plan_name(config: ResNetConfig) -> str | None:
    """The registered architecture whose plan `config` is (any stem), or None."""
    for name in list_models():
        if replace(model_config(name, config.num_classes), stem=config.stem) == config:
            return name
    return None


def _pruned_from(config: ResNetConfig, source: ResNetConfig) -> bool:
    """Whether pruning `source` could have made `config`: the same blocks, no layer wider."""

    def narrower(a: tuple, b: tuple) -> bool:
        return len(a) == len(b) and all(x <= y for x, y in zip(a, b, strict=True))

    same = replace(config, stem_width=0, widths=(), inner=(), projections=())
    return (
        same == replace(source, stem_width=0, widths=(), inner=(), projections=())
        and config.stem_width <= source.stem_width
        and narrower(config.widths, source.widths)
        and config.blocks == source.blocks
        and all(
            narrower(a, b)
            for stage, source_stage in zip(config.inner, source.inner, strict=True)
            for a, b in zip(stage, source_stage, strict=True)
        )
    )


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
