"""onnxruntime sessions with the settings `bench/onnx_speed.py` measured, batched inference, and
the choice of device (`resolve_device`), with the reason when CUDA cannot be used.

Every consumer of an exported file (parity checks, accuracy, `distill predict`, `distill bench`,
`distill eval`) makes its session here, so a setting that pays off is paid everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from distill.errors import UserError, first_line
from distill.files import not_a_file
from distill.memory import inference_batch

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")

# onnxruntime-gpu on PyPI is built for CUDA 13, PyTorch's CUDA (1.31.1 requires
# nvidia-cuda-runtime~=13.0); the CPU package must go first, both share one folder.
ORT_CUDA13_INSTALL = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"

# Progress callback: (images done, images in all).
Progress = Callable[[int, int], None]


def default_threads() -> int:
    """Threads every engine gets unless told otherwise: PyTorch's own default (physical cores)."""
    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# Device


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _ort_cuda_build() -> str | None:
    """The CUDA version this onnxruntime was built for (onnxruntime-gpu >= 1.21 records it)."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return None
    return getattr(info, "cuda_version", None)


def cuda_problem() -> str | None:
    """Why onnxruntime cannot run on a GPU here, with the fix; None when nothing is known wrong.

    The installed providers decide (`get_available_providers()`), not which distributions'
    metadata are present: an onnxruntime-gpu whose CUDA provider is there is used however it
    was installed. The checks are ordered from cause to symptom: no GPU for PyTorch; no CUDA
    provider (the CPU package, or the CPU and GPU packages both installed, which share the
    `onnxruntime` folder and overwrite each other's files); a provider built for another CUDA
    major version than PyTorch's (it cannot load beside PyTorch's libraries, and onnxruntime
    then falls back to the CPU without an error).
    """
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU on this machine"
    if CUDA not in ort.get_available_providers():
        cpu_pkg, gpu_pkg = _installed("onnxruntime"), _installed("onnxruntime-gpu")
        if cpu_pkg and gpu_pkg:
            return (
                f"onnxruntime {cpu_pkg} and onnxruntime-gpu {gpu_pkg} are both installed and the "
                f"CPU package's files won; reinstall one: {ORT_CUDA13_INSTALL}"
            )
        return (
            f"this onnxruntime {ort.__version__} has no CUDA provider (the CPU package); for "
            f"PyTorch's CUDA {torch.version.cuda}: {ORT_CUDA13_INSTALL}"
        )
    built, torch_cuda = _ort_cuda_build(), torch.version.cuda
    if built and torch_cuda and built.split(".")[0] != torch_cuda.split(".")[0]:
        return (
            f"onnxruntime-gpu {ort.__version__} is built for CUDA {built} but PyTorch "
            f"{torch.__version__} uses CUDA {torch_cuda}, so its CUDA provider cannot load beside "
            f"it; install the CUDA {torch_cuda.split('.')[0]} build"
            + (f": {ORT_CUDA13_INSTALL}" if torch_cuda.startswith("13") else "")
        )
    return None


def resolve_device(device: str, say: Callable[[str], None] | None = None) -> str:
    """ "cpu" or "cuda" for onnxruntime. "auto" means CUDA when this onnxruntime has a usable
    CUDA provider and PyTorch sees a GPU, else the CPU, said in one line through `say` when a
    GPU is present but cannot be used. "cuda" that cannot work is a UserError naming why."""
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; pass auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    problem = cuda_problem()
    if problem is None:
        return "cuda"
    if device == "cuda":
        raise UserError(f"--device cuda cannot run onnxruntime: {problem}; or use --device cpu")
    if say is not None and torch.cuda.is_available():
        say(f"onnxruntime runs on the CPU: {problem}")
    return "cpu"


def bench_device(device: str, say: Callable[[str], None]) -> tuple[str, bool]:
    """The device a benchmark of PyTorch and onnxruntime runs on, and whether onnxruntime can
    run there. `--device cuda` needs only PyTorch's GPU: without onnxruntime's CUDA provider the
    PyTorch CUDA rows are still measured and onnxruntime is left out, said through `say` (a
    pipeline on a GPU machine with the default install must not fail at its bench stage)."""
    if device != "cuda":
        return resolve_device(device, say), True
    if not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu"
        )
    problem = cuda_problem()
    if problem is not None:
        say(f"onnxruntime is left out on CUDA: {problem}")
    return "cuda", problem is None


# ---------------------------------------------------------------------------------------------
# Sessions


def session_options(
    threads: int | None = None, *, tuned: bool = True, spinning: bool = True
) -> ort.SessionOptions:
    """CPU session settings. `tuned=False` leaves everything but threads and logging at
    onnxruntime's defaults.

    `bench/onnx_speed.py` measures each setting on resnet18-5m. Measured worth (p50, vs this
    session): ORT_ENABLE_EXTENDED instead of ALL, i.e. no NCHWc layout, 0.80x; ORT_PARALLEL
    0.4-0.5x; no arena/memory pattern 0.86-1.0x; spinning off, dynamic_block_base, denormals as
    zero: within noise or worse when onnxruntime runs alone. So the winners are onnxruntime's
    own defaults, pinned here so that a change of default upstream cannot silently slow distill
    down. The larger gains are in the graph (export.graph: the exporter's optimizer folds BN,
    worth 1.2-1.6x) and int8.
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
    # Spinning workers cut batch-1 latency when onnxruntime has the machine to itself (its
    # default). Benchmarks that alternate engines turn it off (export/benchmark.py says why).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


def make_session(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    threads: int | None = None,
    tuned: bool = True,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An inference session on `device` (cpu, cuda or auto); an unreadable file is a UserError
    naming it, and so is a CUDA provider that did not start."""
    path = Path(path)
    if why := not_a_file(path):
        raise UserError(f"{path} {why}; pass an .onnx file written by distill export")
    device = resolve_device(device)
    providers = [CUDA, CPU] if device == "cuda" else [CPU]
    try:
        session = ort.InferenceSession(
            str(path), session_options(threads, tuned=tuned, spinning=spinning), providers=providers
        )
    except Exception as e:  # protobuf parse errors, unsupported ops: the file is the problem
        reason = first_line(e, 120)
        raise UserError(
            f"{path} is not a loadable ONNX model ({reason}); pass a file written by distill export"
        ) from None
    if device == "cuda" and session.get_providers()[0] != CUDA:
        # onnxruntime falls back to the CPU silently when the CUDA/cuDNN libraries do not load.
        raise UserError(
            "onnxruntime could not start its CUDA provider (its CUDA or cuDNN libraries did not "
            f"load); for PyTorch's CUDA {torch.version.cuda}: {ORT_CUDA13_INSTALL}; or use "
            "--device cpu"
        )
    return session


def as_float_batch(images: torch.Tensor) -> np.ndarray:
    """uint8 [N,3,H,W] (data.py's storage) or float in [0,1] -> the graph's float32 input."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0).numpy()
    return images.float().contiguous().numpy()


def batched_logits(
    run: Callable[[np.ndarray], np.ndarray],
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> np.ndarray:
    """Logits [N, classes] of `run` (any engine) over a tensor of images, in batches of
    `batch_size` at 32x32 and fewer of larger images (`inference_batch`; the last one may be
    short)."""
    batch_size = inference_batch(batch_size, images.shape)
    out = []
    for start in range(0, len(images), batch_size):
        out.append(np.asarray(run(as_float_batch(images[start : start + batch_size]))))
        if progress:
            progress(min(start + batch_size, len(images)), len(images))
    return np.concatenate(out).astype(np.float32, copy=False)


def fixed_batch(session: ort.InferenceSession) -> int | None:
    """The batch size the graph's input is fixed to (a model exported without a dynamic batch
    axis), or None when any batch goes."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def in_fixed_batches(
    run: Callable[[np.ndarray], np.ndarray], batch: int | None
) -> Callable[[np.ndarray], np.ndarray]:
    """`run` for any number of images: a fixed-batch graph is given exactly its batch at a time
    (the last chunk padded with copies of its last image, whose outputs are dropped)."""
    if batch is None:
        return run

    def run_fixed(x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            out.append(np.asarray(run(chunk))[:n])
        return np.concatenate(out)

    return run_fixed


def run_logits(
    session: ort.InferenceSession,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> np.ndarray:
    """Logits [N, classes] of an onnxruntime session for a tensor of images."""
    name = session.get_inputs()[0].name
    return batched_logits(
        in_fixed_batches(lambda x: session.run(None, {name: x})[0], fixed_batch(session)),
        images,
        batch_size=batch_size,
        progress=progress,
    )
