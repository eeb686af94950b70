"""The ONNX graph of a module: torch's exporter, pinned opset, the input and output names every
reader of an exported file (parity, calibration, engines) relies on, and a dynamic batch axis.

Kept apart from the whole export (onnx.py) because bench, quantisation and the bench/ scripts
build graphs too, without the checks and metadata around them.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

OPSET = 18  # pinned: onnxruntime >= 1.14 runs it and torch's dynamo exporter targets it natively
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The exporter takes 4-10 s for a small CIFAR ResNet, and one process often exports the same
# weights twice (the fp32 file, then the graph its int8 sibling is quantised from): keep the
# last few graphs, known by the module's structure and every weight's bytes.
_RECENT: OrderedDict[str, bytes] = OrderedDict()
_RECENT_BYTES = 128 * 2**20


def export_graph(module: nn.Module, input_size: list[int], path: str | os.PathLike) -> None:
    """torch.export-based exporter (torch's default since 2.9; the TorchScript one is deprecated)
    with a dynamic batch axis, written as one self-contained file. The same module (structure
    and weights) exported again in this process is written from the graph already made."""
    key = _identity(module, input_size)
    if key in _RECENT:
        _RECENT.move_to_end(key)
        Path(path).write_bytes(_RECENT[key])
        return
    _export(module, input_size, path)
    graph = Path(path).read_bytes()
    if len(graph) <= _RECENT_BYTES:
        _RECENT[key] = graph
        while sum(map(len, _RECENT.values())) > _RECENT_BYTES:
            _RECENT.popitem(last=False)


def _identity(module: nn.Module, input_size: list[int]) -> str:
    """Structure (each submodule's class, repr and plain attributes, which steer a forward pass
    as much as the weights do) and every tensor's bytes."""
    h = hashlib.sha256(f"{list(input_size)} {OPSET}".encode())
    for name, sub in module.named_modules():
        plain = {k: v for k, v in vars(sub).items() if isinstance(v, (bool, int, float, str))}
        plain.pop("training", None)
        h.update(
            f"{name} {type(sub).__module__}.{type(sub).__qualname__} {sub.extra_repr()}".encode()
        )
        h.update(repr(sorted(plain.items())).encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _export(module: nn.Module, input_size: list[int], path: str | os.PathLike) -> None:
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
