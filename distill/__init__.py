"""distill: knowledge distillation and compression of small-image classifiers under a hard
parameter budget. The command line is `distill`; the same steps from Python are in `distill.api`
and re-exported here (imported on first use, so `import distill` stays cheap)."""

from __future__ import annotations

import importlib
import sys
import types
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


class _Package(types.ModuleType):
    """`distill.prune` is the API function, but distill/prune.py is a submodule of the same name,
    and importing a submodule sets it as an attribute of its package, which would hide the
    function (`__getattr__` runs only for missing names). The submodule stays importable: use
    `from distill.prune import ...` (not `import distill.prune as m`, which reads the attribute).
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the import system's assignment; sys.modules still holds the submodule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
