"""Deployment: ONNX export with checked parity (onnx.py), onnxruntime sessions (runtime.py),
prediction (predict.py) and benchmarks (bench.py).

Importing the package is cheap (the CLI imports it for `distill --help`); the library functions
load on first use: `from export import export_onnx` works.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export_onnx": "export.onnx",
    "check_parity": "export.onnx",
    "quantize_int8": "export.onnx",
    "read_metadata": "export.onnx",
    "ExportReport": "export.onnx",
    "Parity": "export.onnx",
    "ParityError": "export.onnx",
    "make_session": "export.runtime",
    "predict": "export.predict",
    "Prediction": "export.predict",
    "benchmark": "export.bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
