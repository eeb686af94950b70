"""Self-describing checkpoints (SPEC 6): plain values and tensors, atomic writes, safe loads.

Every checkpoint is read with `torch.load(weights_only=True)`: no code is ever unpickled. A model is
rebuilt from the checkpoint's `model_config` channel plan plus its state dict.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import UserError
from distill.registry import build_model

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
        "versions": library_versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Temp file in the same folder, fsync, rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; give the file the permissions any other new file would get.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    atomic_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a distill checkpoint; anything else is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; pass the .pt file a distill command wrote"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors: not a torch file, truncated, or holds code
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a readable distill checkpoint ({reason[:120]}); "
            "pass a .pt file written by distill"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a distill checkpoint; pass a .pt file written by distill")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {ckpt['format_version']}, newer than this distill "
            f"reads ({FORMAT_VERSION}); upgrade distill"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture from its channel plan, load the weights, return it in eval mode."""
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output(
    path: str | os.PathLike, force: bool, suffixes: tuple[str, ...] = (".pt",)
) -> Path:
    """Validate an output path before any work: never overwrite without --force."""
    path = Path(path)
    if suffixes and path.suffix not in suffixes:
        raise UserError(f"output {path} should end in {' or '.join(suffixes)}; rename it")
    if path.is_dir():
        raise UserError(f"output {path} is a directory; pass a file path")
    if path.exists() and not force:
        raise UserError(
            f"{path} already exists; pass --force to overwrite it or choose another --out"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {parent}; choose a writable --out")
    return path
