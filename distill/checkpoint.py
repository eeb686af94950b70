"""Self-describing checkpoints (SPEC 6): plain values and tensors, atomic writes, safe loads.

Every checkpoint is read with `torch.load(weights_only=True)`: no code is ever unpickled. A model is
rebuilt from the checkpoint's `model_config` channel plan plus its state dict.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import UserError, control_characters, first_line, unreadable_torch_file
from distill.files import atomic_save, not_a_file
from distill.registry import build_model, label_disagrees
from students.resnet import ResNetConfig
from teachers.imported import is_imported

FORMAT = "distill-checkpoint"
FORMAT_VERSION = 1
KINDS = ("teacher", "student", "pruned")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "torch-pruning", "onnx", "onnxruntime", "distill"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def unwrapped(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        else:
            return model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in unwrapped(model).state_dict().items()}


def new_checkpoint(
    *,
    kind: str,
    arch: str,
    model: nn.Module,
    classes: list[str],
    mean: list[float],
    std: list[float],
    input_size: list[int],
    recipe: dict[str, Any],
    data: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    teachers: list[dict[str, Any]] | None = None,
    kd: dict[str, Any] | None = None,
    pruning: dict[str, Any] | None = None,
    pipeline: dict[str, Any] | None = None,
    origin: dict[str, Any] | None = None,
    tracking: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    net = unwrapped(model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "arch": arch,
        "model_config": net.channel_plan().to_dict(),
        "state_dict": cpu_state_dict(net),
        "classes": list(classes),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "input_size": [int(i) for i in input_size],
        "recipe": dict(recipe),
        "metrics": dict(metrics or {}),
        "history": list(history or []),
        "teachers": list(teachers or []),
        "kd": kd,
        "data": dict(data),
        "pruning": pruning,
        "pipeline": pipeline,  # the pipeline stage that made it: {stage, fingerprint}
        "origin": origin,  # an imported model's starting weights: {weights, sha256}
        "tracking": tracking,  # its MLflow run: {mlflow_uri, run_id}
        "versions": library_versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    atomic_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a distill checkpoint; anything else is a UserError naming the file."""
    path = Path(path)
    if why := not_a_file(path):
        raise UserError(f"checkpoint {path} {why}; pass the .pt file a distill command wrote")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors: not a torch file, truncated, or holds code
        raise UserError(
            f"{path} is not a readable distill checkpoint ({unreadable_torch_file(e, path)}); "
            "pass a .pt file written by distill"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a distill checkpoint; pass a .pt file written by distill")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {version!r}, newer than this distill reads "
            f"({FORMAT_VERSION}); upgrade distill"
        )
    problem = _malformed(ckpt)
    if problem:
        raise UserError(f"{path} is a damaged distill checkpoint ({problem}); pass another file")
    return ckpt


MAX_WIDTH = 1 << 16  # channels in any layer of a CIFAR ResNet; a larger plan is not a real model
MAX_INPUT_SIDE = 4096


def _malformed(ckpt: dict[str, Any]) -> str | None:
    """What is wrong with the fields every reader relies on, or None. A crafted or damaged file
    must be refused here with one line, not fail later with a traceback (or a huge allocation)."""

    def numbers(v: Any, n: int) -> bool:
        return (
            isinstance(v, list)
            and len(v) == n
            and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
        )

    classes = ckpt.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes is not a list of names"
    named = next((c for c in classes if control_characters(c)), None)
    if named is not None:  # data with such a name is refused; so is a file claiming one
        return f"class name {named!r} holds a control character ({control_characters(named)})"
    size = ckpt.get("input_size")
    if not (
        isinstance(size, list)
        and len(size) == 3
        and all(isinstance(v, int) and 0 < v <= MAX_INPUT_SIDE for v in size)
    ):
        return f"input_size {size!r} is not [channels, height, width]"
    for key in ("mean", "std"):
        if not numbers(ckpt.get(key), size[0]):
            return f"{key} is not {size[0]} finite numbers"
    if not all(s > 0 for s in ckpt["std"]):
        return "std has a value that is not positive"
    config = ckpt.get("model_config")
    if not isinstance(config, dict):
        return "model_config is missing"
    if is_imported(config):
        if not isinstance(config.get("name"), str):
            return "model_config names no architecture"
        if config.get("num_classes") != len(classes):
            return (
                f"model_config predicts {config.get('num_classes')!r} classes, not {len(classes)}"
            )
        if not isinstance(ckpt.get("state_dict"), dict):
            return "state_dict is missing"
        named = f"{config['source']}:{config['name']}"
        arch = ckpt.get("arch")
        return None if arch == named else f"arch says {arch}, but its weights are {named}"
    widths = [config.get("stem_width"), *(config.get("widths") or [None])]
    widths += [w for stage in config.get("inner") or [] for block in stage for w in block]
    if not all(isinstance(w, int) and 0 < w <= MAX_WIDTH for w in widths):
        return "model_config has a width that is not a positive channel count"
    if config.get("num_classes") != len(classes):
        return f"model_config predicts {config.get('num_classes')!r} classes, not {len(classes)}"
    if not isinstance(ckpt.get("state_dict"), dict):
        return "state_dict is missing"
    if not isinstance(ckpt.get("arch"), str):
        return "arch is not a name"
    return _plan_disagrees(ckpt) or _bad_record(ckpt)


def _plan_disagrees(ckpt: dict[str, Any]) -> str | None:
    """Where the weights, the channel plan and the arch label do not tell one story, or None.

    The model is built from the plan and every reader repeats the label, so a hand-edited label
    (or plan) would be shown everywhere as a model it is not. The weights are what runs: each
    tensor must have the shape the plan gives it (checked on the meta device, nothing
    allocated), and the label must name that plan (or, NAME-pruned, a narrowing of NAME's).
    A tensor the plan lacks is refused here; one the plan has and the weights lack is refused
    where the model is built."""
    try:
        config = ResNetConfig.from_dict(ckpt["model_config"])
        with torch.device("meta"):
            expected = build_model(config).state_dict()
    except (KeyError, TypeError, ValueError) as e:
        return f"model_config is not a channel plan ({first_line(e, 80)})"
    for key, value in ckpt["state_dict"].items():
        shape = expected.get(key)
        if shape is None:
            return f"the weights hold {str(key)[:80]!r}, which the channel plan has no layer for"
        if not isinstance(value, torch.Tensor) or value.shape != shape.shape:
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            return f"the weights' {key} is {got}, the channel plan makes {list(shape.shape)}"
    return label_disagrees(ckpt["arch"], config)


FRACTIONS = ("val_accuracy", "val_top5", "test_accuracy", "test_top5", "teacher_agreement")
COUNTS = ("params", "macs", "epochs_run", "best_epoch")


def _bad_record(ckpt: dict[str, Any]) -> str | None:
    """What is impossible in the results a checkpoint records: a reader prints them, so an
    accuracy of 150% or a metrics field that is not a table must not reach it."""
    metrics = ckpt.get("metrics", {})
    if not isinstance(metrics, dict):
        return "metrics is not a table"
    for key in FRACTIONS:
        v = metrics.get(key)
        ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1)
        if not ok:
            return f"metrics {key} {v!r} is not a fraction in [0, 1]"
    for key in COUNTS:
        v = metrics.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            return f"metrics {key} {v!r} is not a count"
    history = ckpt.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "history is not a list of epochs"
    return None


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture from its channel plan, load the weights, return it in eval mode."""
    try:
        model = build_model(ckpt["model_config"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        reason = first_line(e, 120)
        raise UserError(
            f"the checkpoint's weights do not fit its channel plan ({reason}); it is damaged"
        ) from None
    return model.eval()
