"""What `distill models` and `distill budget` report: registry rows, fitted plans, any model by
name or file."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from distill.budget import count_macs, count_params
from distill.errors import UserError
from distill.registry import create_model, get_entry, list_models, model_config
from distill.sizing import EXAMPLE, FIT_INPUT, is_fitted, parse_fit_name, plan_cost


def describe_models() -> list[dict]:
    """One row per registered architecture: name, role, params, MACs at 3x32x32 (10 classes)."""
    rows = []
    for name in list_models():
        model = create_model(name)
        rows.append(
            {
                "name": name,
                "role": get_entry(name).role,
                "params": count_params(model),
                "macs": count_macs(model),
            }
        )
    return rows


def describe_fit(name: str, num_classes: int = 10) -> dict:
    """A `FAMILY@BUDGET` name's fitted plan beside its family's registered one: params, MACs at
    3x32x32, the share of the budget (and MAC ceiling) used. Plain values, ready for JSON."""
    if not is_fitted(name):
        raise UserError(f"{name!r} names no budget to fit; {EXAMPLE}")
    spec = parse_fit_name(name)
    config = model_config(name, num_classes)
    params, macs = plan_cost(config)
    family_params, family_macs = plan_cost(model_config(spec.family, num_classes))
    return {
        "name": name,
        "family": spec.family,
        "budget": spec.budget,
        "mac_ceiling": spec.mac_ceiling,
        "params": params,
        "macs": macs,
        "budget_used": params / spec.budget,
        "macs_used": None if spec.mac_ceiling is None else macs / spec.mac_ceiling,
        "family_params": family_params,
        "family_macs": family_macs,
        "input_size": list(FIT_INPUT),
        "plan": config.to_dict(),  # what a checkpoint stores as model_config
    }


def load_any_model(target: str) -> tuple[nn.Module, str, tuple[int, int, int]]:
    """A registered or `FAMILY@BUDGET` name, or a checkpoint path -> (model, label, input size)."""
    from distill.checkpoint import load_checkpoint, model_from_checkpoint

    if target.endswith(".pt") or Path(target).exists():
        ckpt = load_checkpoint(target)
        return model_from_checkpoint(ckpt), f"{target} ({ckpt['arch']})", tuple(ckpt["input_size"])
    get_entry(target)  # an unknown name is a UserError listing the names
    return create_model(target), target, (3, 32, 32)
