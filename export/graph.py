"""The ONNX graph of a module: torch's exporter, pinned opset, the input and output names every
reader of an exported file (parity, calibration, engines) relies on, and a dynamic batch axis.

Kept apart from the whole export (onnx.py) because bench, quantisation and the bench/ scripts
build graphs too, without the checks and metadata around them.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

OPSET = 18  # pinned: onnxruntime >= 1.14 runs it and torch's dynamo exporter targets it natively
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_graph(module: nn.Module, input_size: list[int], path: str | os.PathLike) -> None:
    """torch.export-based exporter (torch's default since 2.9; the TorchScript one is deprecated)
    with a dynamic batch axis, written as one self-contained file."""
    # Batch 2, not 1: torch.export specialises size-1 dimensions to constants.
    example = torch.rand(2, *input_size, dtype=torch.float32)
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # exporter chatter about internals, not about the model
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            # The onnxscript optimizer folds BatchNorm into the convolutions and drops the
            # Shape/Expand/CastLike plumbing around it; without it onnxruntime keeps 20 BN nodes
            # and resnet18-5m runs 1.3-1.6x slower (bench/onnx_speed.py).
            optimize=True,
            verbose=False,
        )
