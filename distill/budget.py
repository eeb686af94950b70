"""Parameter and MAC accounting, and the budget check every stage runs before it starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distill.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI parses budgets without it
    import torch
    from torch import nn

DEFAULT_BUDGET = 5_000_000
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_budget(text: str | int) -> int:
    """'5M', '2.5m', '800k', '4990000' -> an int parameter count."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"budget {text!r} is not a positive count; write it like 5M, 2.5M or 800k")
    return int(round(float(m.group(1)) * _SUFFIX[m.group(2).lower()]))


def format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def count_params(model: nn.Module) -> int:
    """Trainable parameters (BN running stats are buffers, so they are excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _macs_by_part(
    model: nn.Module, input_size: tuple[int, ...], part_of: dict[nn.Module, str]
) -> dict[str, int]:
    """Multiply-accumulates of one image's forward, by hooks on conv and linear layers, summed
    per part name (`part_of` maps a layer to its part; layers not in it count as "total")."""
    import torch
    from torch import nn

    macs: dict[str, int] = {}

    def hook(mod: nn.Module, _inp, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        else:
            k = mod.in_features
        part = part_of.get(mod, "total")
        macs[part] = macs.get(part, 0) + out[0].numel() * k

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> int:
    """Multiply-accumulates of one image's forward pass (conv and linear layers)."""
    return sum(_macs_by_part(model, input_size, {}).values())


@dataclass(frozen=True)
class StageCost:
    name: str
    params: int
    macs: int


def stage_costs(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> list[StageCost]:
    """Params and MACs of the stem, each residual stage and the head of a CifarResNet; of each
    top-level part that has parameters for another architecture (an imported teacher)."""
    from torch import nn

    if hasattr(model, "stem"):
        parts = [("stem", model.stem)]
        parts += [(f"stage{i + 1}", s) for i, s in enumerate(model.stages)]
        parts += [("head", nn.ModuleList([model.final, model.fc]))]
    else:
        net = getattr(model, "net", model)
        parts = [(n, m) for n, m in net.named_children() if count_params(m)]
    part_of = {m: name for name, part in parts for m in part.modules()}
    macs = _macs_by_part(model, input_size, part_of)
    return [StageCost(name, count_params(part), macs.get(name, 0)) for name, part in parts]


def check_budget(model: nn.Module, budget: int, what: str) -> int:
    """Raise a UserError when `model` is over `budget` trainable parameters; return its count."""
    params = count_params(model)
    if params > budget:
        raise UserError(
            f"{what} has {params:,} parameters, over the budget of {budget:,}; "
            "choose a smaller architecture or raise --budget"
        )
    return params
