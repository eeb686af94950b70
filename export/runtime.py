"""onnxruntime sessions with the settings `bench/onnx_speed.py` measured, and batched inference.

Every consumer of an exported file (parity checks, int8 accuracy, `distill predict`, `distill
bench`, `distill eval`) makes its session here, so a setting that pays off is paid everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from distill.errors import UserError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# Progress callback: (images done, images in all).
Progress = Callable[[int, int], None]


def default_threads() -> int:
    """Threads both engines get unless told otherwise: PyTorch's own default (physical cores)."""
    return torch.get_num_threads()


def session_options(threads: int | None = None, *, tuned: bool = True) -> ort.SessionOptions:
    """CPU session settings. `tuned=False` leaves everything but threads and logging at
    onnxruntime's defaults.

    `bench/onnx_speed.py` measures each setting on resnet18-5m. Measured worth (p50, vs this
    session): ORT_ENABLE_EXTENDED instead of ALL, i.e. no NCHWc layout, 0.80x; ORT_PARALLEL
    0.4-0.5x; no arena/memory pattern 0.86-1.0x; spinning off, dynamic_block_base, denormals as
    zero: within noise or worse. So the winners are onnxruntime's own defaults, pinned here so
    that a change of default upstream cannot silently slow distill down. The larger gains are in
    the graph (export.onnx: the exporter's optimizer folds BN, worth 1.2-1.6x) and int8.
    """
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ORT's warnings are about its own internals
    so.intra_op_num_threads = threads or default_threads()
    if not tuned:
        return so
    # ORT_ENABLE_ALL adds the NCHWc layout transform (blocked convolutions for AVX2/AVX-512) on
    # top of the Conv+Add+ReLU fusions of the lower levels.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # PARALLEL: 2x slower on a ResNet
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True  # activations planned once per input shape
    # Spinning workers cut batch-1 latency on a dedicated machine (ORT's default); on a machine
    # shared with other busy processes allow_spinning=0 can be faster.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return so


def make_session(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    threads: int | None = None,
    tuned: bool = True,
) -> ort.InferenceSession:
    """An inference session on `device`; an unreadable file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass an .onnx file written by distill export")
    if device == "cuda":
        if CUDA not in ort.get_available_providers():
            raise UserError(
                "this onnxruntime has no CUDA provider; install onnxruntime-gpu or use --device cpu"
            )
        providers: list = [CUDA, CPU]
    elif device == "cpu":
        providers = [CPU]
    else:
        raise UserError(f"unknown device {device!r}; pass cpu or cuda")
    try:
        session = ort.InferenceSession(
            str(path), session_options(threads, tuned=tuned), providers=providers
        )
    except Exception as e:  # protobuf parse errors, unsupported ops: the file is the problem
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a loadable ONNX model ({reason}); pass a file written by distill export"
        ) from None
    if device == "cuda" and session.get_providers()[0] != CUDA:
        # onnxruntime falls back to the CPU silently when the CUDA/cuDNN libraries do not load.
        raise UserError(
            "onnxruntime could not start its CUDA provider (CUDA or cuDNN libraries not found or "
            "mismatched); install the versions onnxruntime-gpu requires, or use --device cpu"
        )
    return session


def as_float_batch(images: torch.Tensor) -> np.ndarray:
    """uint8 [N,3,H,W] (data.py's storage) or float in [0,1] -> the graph's float32 input."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0).numpy()
    return images.float().contiguous().numpy()


def run_logits(
    session: ort.InferenceSession,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> np.ndarray:
    """Logits [N, classes] for a tensor of images, run in batches (the last one may be odd)."""
    name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(images), batch_size):
        batch = as_float_batch(images[start : start + batch_size])
        out.append(session.run(None, {name: batch})[0])
        if progress:
            progress(min(start + batch_size, len(images)), len(images))
    return np.concatenate(out).astype(np.float32, copy=False)
