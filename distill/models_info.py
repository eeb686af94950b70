"""What `distill models` and `distill budget` report: registry rows, any model by name or file."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from distill.budget import count_macs, count_params
from distill.errors import UserError
from distill.registry import create_model, get_entry, list_models


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


def load_any_model(target: str) -> tuple[nn.Module, str, tuple[int, int, int]]:
    """A registered name or a checkpoint path -> (model, label, input size)."""
    from distill.checkpoint import load_checkpoint, model_from_checkpoint

    if target.endswith(".pt") or Path(target).exists():
        ckpt = load_checkpoint(target)
        return model_from_checkpoint(ckpt), f"{target} ({ckpt['arch']})", tuple(ckpt["input_size"])
    try:
        get_entry(target)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    return create_model(target), target, (3, 32, 32)
