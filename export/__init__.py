"""Deployment: ONNX export (onnx.py: the whole export; graph.py: the exporter; checks.py:
parity, check images and accuracy; quantize.py: int8), the metadata every reader checks
(metadata.py), onnxruntime sessions and the device choice (runtime.py), engines behind one
interface (engines.py: PyTorch, onnxruntime, OpenVINO), the CPU's abilities (machine.py),
prediction (predict.py) and benchmarks (benchmark.py: the benchmark; timing.py: how it times;
model_files.py: the files it times; record.py: its rows, summary, environment and output).

Importing the package is cheap (the CLI imports it for `distill --help`); the library functions
load on first use: `from export import export_onnx` works.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export_onnx": "export.onnx",
    "ExportReport": "export.onnx",
    "check_parity": "export.checks",
    "load_check_images": "export.checks",
    "Parity": "export.checks",
    "ParityError": "export.checks",
    "quantize_int8": "export.quantize",
    "read_metadata": "export.metadata",
    "make_session": "export.runtime",
    "resolve_device": "export.runtime",
    "Engine": "export.engines",
    "open_engine": "export.engines",
    "predict": "export.predict",
    "read_image": "distill.data.images",
    "Prediction": "export.predict",
    "benchmark": "export.benchmark",
    "check_bench_output": "export.record",
    "write_bench_record": "export.record",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
