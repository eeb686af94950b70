"""distill: knowledge distillation and compression of small-image classifiers under a hard
parameter budget. The command line is `distill`; the same steps from Python are in `distill.api`
and re-exported here (imported on first use, so `import distill` stays cheap)."""

from __future__ import annotations

import importlib
from importlib import metadata

try:
    __version__ = metadata.version("distill")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

_API = (
    "load_model",
    "train_teacher",
    "train_student",
    "prune",
    "export_onnx",
    "evaluate",
)

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("distill.api"), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
