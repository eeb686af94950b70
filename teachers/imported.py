"""Architectures from torchvision and timm, named `torchvision:resnet50` or `timm:NAME`: the
pretrained teachers users already have. Nothing is downloaded: the architecture is built empty
and the user's own state dict (a file) is loaded into it.

A checkpoint records such a model as `{"source": ..., "name": ..., "num_classes": ...}` in
place of a channel plan, and `build_imported` rebuilds it from that record alone, as the
registry rebuilds a CIFAR ResNet from its plan.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import UserError, unreadable_torch_file
from distill.files import not_a_file

SOURCES = ("torchvision", "timm")


@dataclass(frozen=True)
class ImportedConfig:
    source: str
    name: str
    num_classes: int

    @property
    def arch(self) -> str:
        return f"{self.source}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImportedModel(nn.Module):
    """A torchvision or timm classifier that a checkpoint can describe (`channel_plan` is the
    name every distill model answers to; here it is the architecture's name)."""

    def __init__(self, config: ImportedConfig) -> None:
        super().__init__()
        self.config = config
        self.net = _architecture(config.source, config.name, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def channel_plan(self) -> ImportedConfig:
        return self.config


def is_imported(arch_or_config: str | dict[str, Any]) -> bool:
    if isinstance(arch_or_config, dict):
        return arch_or_config.get("source") in SOURCES
    return arch_or_config.split(":", 1)[0] in SOURCES and ":" in arch_or_config


def parse_spec(spec: str) -> tuple[str, str]:
    source, _, name = spec.partition(":")
    if source not in SOURCES or not name:
        raise UserError(
            f"{spec!r} is not an architecture to import; name one as torchvision:NAME or "
            "timm:NAME, e.g. torchvision:resnet50"
        )
    names = _names(source)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(
            f"{source} has no architecture {name!r}; {hint}see {_listing(source)} for the names"
        )
    return source, name


def build_imported(config: dict[str, Any] | ImportedConfig) -> ImportedModel:
    """The model a checkpoint's `model_config` describes, with fresh weights."""
    if isinstance(config, dict):
        config = ImportedConfig(
            str(config["source"]), str(config["name"]), int(config["num_classes"])
        )
    return ImportedModel(config)


def with_weights(
    source: str, name: str, state: dict[str, torch.Tensor], weights: Path, num_classes: int
) -> ImportedModel:
    """`source:name` holding `state` (read from `weights`), its classifier replaced by a fresh
    one for `num_classes` classes (kept when it already has that many outputs)."""
    model = build_imported(ImportedConfig(source, name, num_classes))
    own = model.net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or len(reshaped) > 2:  # a classifier is a weight and a bias
        what = "; ".join(
            f"{label} {len(keys)} like {keys[0]!r}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", reshaped),
            )
            if keys
        )
        raise UserError(
            f"{weights} does not hold the weights of {source}:{name} ({what}); pass that "
            "architecture's state dict, or name the architecture it belongs to"
        )
    model.net.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, strict=False)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt file (read with weights_only=True: no code runs) or a
    .safetensors file; one nesting level under "state_dict", "model" or "model_state_dict"
    (how training scripts often save them) is unwrapped."""
    if why := not_a_file(path):
        raise UserError(f"weights file {path} {why}; pass the state dict you saved")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"{path} is not a readable state dict ({unreadable_torch_file(e, path)}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"{path} is not a state dict (names to tensors); save it with "
            "torch.save(model.state_dict(), path)"
        )
    # DataParallel / DDP saves prefix every name with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _architecture(source: str, name: str, num_classes: int) -> nn.Module:
    if source == "torchvision":
        import torchvision.models

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    timm = _timm()
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _names(source: str) -> list[str]:
    if source == "torchvision":
        import torchvision.models

        return list(torchvision.models.list_models(module=torchvision.models))  # classifiers
    return list(_timm().list_models())


def _listing(source: str) -> str:
    if source == "torchvision":
        return "torchvision.models.list_models()"
    return "timm.list_models()"


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError("timm:NAME needs the timm package: pip install 'distill[timm]'") from None
    return timm
