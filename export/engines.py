"""One interface over everything that runs a model: PyTorch eager, onnxruntime, OpenVINO.

An `Engine` is a name, a precision and `run(x) -> logits` (x float32 [N,3,H,W] in [0,1], the
exported graph's input), plus `prepare(x)`, which returns a call to time on a fixed input (on a
GPU it keeps the input on the device and waits for the kernels). Benchmarks, prediction and
accuracy all go through it, so every engine is measured and used the same way.

OpenVINO is an optional extra (`pip install distill[openvino]`): imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.errors import UserError, first_line
from export.checks import accuracy
from export.runtime import (
    batched_logits,
    default_threads,
    fixed_batch,
    in_fixed_batches,
    make_session,
    resolve_device,
)

ENGINES = ("pytorch", "onnxruntime", "openvino")
_ALIASES = {"ort": "onnxruntime", "torch": "pytorch", "ov": "openvino"}
OPENVINO_INSTALL = "pip install 'distill[openvino]' (or pip install openvino)"

# OpenVINO's element types -> the names used here.
_OV_TYPES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


@dataclass(frozen=True)
class Engine:
    name: str  # pytorch | onnxruntime | openvino
    precision: str  # the row's label: fp32, bf16, fp16, int8, or "default" (OpenVINO's choice)
    arithmetic: str  # what its kernels compute in (fp32, bf16, fp16, int8): which peak applies
    device: str  # cpu | cuda
    detail: str  # how it runs, for the record
    run: Callable[[np.ndarray], np.ndarray]
    prepare: Callable[[np.ndarray], Callable[[], object]]

    @property
    def label(self) -> str:
        shown = f"default ({self.arithmetic})" if self.precision == "default" else self.precision
        return f"{self.name} {shown}"


def engine_name(text: str) -> str:
    """'ort' -> 'onnxruntime' etc.; an unknown name is a UserError listing the known ones."""
    name = _ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in ENGINES:
        raise UserError(f"unknown engine {text!r}; choose from {', '.join(ENGINES)} (or ort)")
    return name


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def parse_engines(text: str | Sequence[str] | None) -> list[str]:
    """ "pytorch,ort,openvino" -> engine names; None or "all": every engine available here."""
    if text is None or text == "all":
        return [e for e in ENGINES if e != "openvino" or openvino_available()]
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(engine_name(p) for p in parts if p.strip()))
    if not names:
        raise UserError(f"--engines {text!r} names no engine; choose from {', '.join(ENGINES)}")
    if "openvino" in names and not openvino_available():
        raise UserError(f"--engines names openvino, which is not installed; {OPENVINO_INSTALL}")
    return names


def top1(
    engine: Engine, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> float:
    """The engine's top-1 accuracy on uint8 images."""
    return accuracy(batched_logits(engine.run, images, batch_size=batch_size), labels)


# ---------------------------------------------------------------------------------------------
# onnxruntime


def onnxruntime_engine(
    path: str | os.PathLike,
    precision: str,
    *,
    device: str = "cpu",
    threads: int | None = None,
    spinning: bool = True,
) -> Engine:
    """The file under onnxruntime. On CUDA, `prepare` uses IO binding: the input is copied to
    the GPU once and the output stays there, so a timed run is the model's, not PCIe's."""
    import onnxruntime as ort

    threads = threads or default_threads()
    session = make_session(path, device=device, threads=threads, spinning=spinning)
    name = session.get_inputs()[0].name
    device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    fixed = fixed_batch(session)
    run = in_fixed_batches(lambda x: session.run(None, {name: x})[0], fixed)

    def prepare(x: np.ndarray) -> Callable[[], object]:
        check_batch(path, fixed, len(x))
        if device == "cpu":
            return lambda: session.run(None, {name: x})
        binding = session.io_binding()
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(session.get_outputs()[0].name, "cuda")

        def run_bound() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()  # sync point: the kernels have finished

        return run_bound

    where = "IO binding" if device == "cuda" else f"{threads} threads"
    spin = "" if spinning else ", intra-op spinning off"
    detail = f"{session.get_providers()[0]}, {where}{spin}, {Path(path).name}"
    return Engine("onnxruntime", precision, precision, device, detail, run, prepare)


def check_batch(path: str | os.PathLike, fixed: int | None, n: int) -> None:
    """A timed run is one call on the whole batch: a graph of a fixed batch takes only that."""
    if fixed is not None and n != fixed:
        raise UserError(
            f"{path} takes a fixed batch of {fixed} (exported without a dynamic batch "
            f"axis), not {n}; bench it with --batch-sizes {fixed}, or export it again"
        )


# ---------------------------------------------------------------------------------------------
# OpenVINO


def openvino_engine(
    path: str | os.PathLike,
    precision: str,
    *,
    threads: int | None = None,
    f32: bool = False,
) -> Engine:
    """The file under OpenVINO on the CPU, latency-tuned (one stream, `threads` threads).

    By default OpenVINO picks its own inference precision: bf16 on CPUs with native bf16, f32
    elsewhere; `f32=True` pins f32 (INFERENCE_PRECISION_HINT). An int8 QDQ file runs its
    quantised layers in int8 either way. The row says which precision actually ran.
    """
    try:
        import openvino as ov
    except ImportError:
        raise UserError(f"OpenVINO is not installed; {OPENVINO_INSTALL}") from None
    threads = threads or default_threads()
    config: dict[str, object] = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    core = ov.Core()
    try:
        model = core.read_model(str(path))
        compiled = core.compile_model(model, "CPU", config)
    except RuntimeError as e:
        reason = first_line(e, 120)
        raise UserError(f"OpenVINO cannot load {path} ({reason}); use --engine ort") from None
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    arithmetic = "int8" if precision == "int8" else _OV_TYPES.get(hint, hint)
    label = precision if precision != "fp32" else ("fp32" if f32 else "default")
    request = compiled.create_infer_request()
    batch = model.input(0).get_partial_shape()[0]
    # A graph exported without a dynamic batch axis takes that many images per call, as under
    # onnxruntime (export/runtime.py).
    fixed = batch.get_length() if batch.is_static else None
    run = in_fixed_batches(lambda x: np.array(request.infer([x])[0]), fixed)

    def prepare(x: np.ndarray) -> Callable[[], object]:
        check_batch(path, fixed, len(x))
        # Shared buffers: no copy of the input in or the logits out, as onnxruntime on CPU.
        return lambda: request.infer([x], share_inputs=True, share_outputs=True)

    detail = f"OpenVINO {ov.get_version().split('-')[0]} CPU, {threads} threads, "
    detail += f"INFERENCE_PRECISION_HINT {hint}, {Path(path).name}"
    return Engine("openvino", label, arithmetic, "cpu", detail, run, prepare)


# ---------------------------------------------------------------------------------------------
# PyTorch

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pytorch_engine(module: nn.Module, precision: str = "fp32", *, device: str = "cpu") -> Engine:
    """`module` (a reference module: [0,1] input, logits out) in eager mode under
    `torch.inference_mode`; bf16/fp16 through autocast. On CUDA the model and input are
    channels_last (cuDNN's preferred layout), cuDNN searches for its fastest kernels during
    the warm-up (`cudnn.benchmark`, as onnxruntime's CUDA provider searches exhaustively), and a
    timed run ends with a synchronisation. Threads: PyTorch's global setting (the benchmark
    sets it for every engine alike)."""
    if precision not in _AUTOCAST:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(_AUTOCAST)}")
    dtype = _AUTOCAST[precision]
    cuda = device == "cuda"
    module = module.eval()
    if cuda:
        module = module.to("cuda", memory_format=torch.channels_last)
        # Without it PyTorch runs cuDNN's heuristic pick against onnxruntime's measured best.
        torch.backends.cudnn.benchmark = True

    def forward(xt: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            return module(xt)

    def to_input(x: np.ndarray) -> torch.Tensor:
        xt = torch.from_numpy(x)
        return xt.to("cuda").contiguous(memory_format=torch.channels_last) if cuda else xt

    def run(x: np.ndarray) -> np.ndarray:
        return forward(to_input(x)).float().cpu().numpy()

    def prepare(x: np.ndarray) -> Callable[[], object]:
        xt = to_input(x)
        if not cuda:
            return lambda: forward(xt)

        def run_cuda() -> None:
            forward(xt)
            torch.cuda.synchronize()  # sync point: the kernels have finished

        torch.cuda.synchronize()
        return run_cuda

    how = "autocast " + precision if dtype is not None else "float32"
    layout = ", channels_last" if cuda else ""
    detail = f"eager, inference_mode, {how}{layout}"
    return Engine("pytorch", precision, precision, device, detail, run, prepare)


# ---------------------------------------------------------------------------------------------
# For prediction


def open_engine(
    path: str | os.PathLike,
    engine: str = "onnxruntime",
    *,
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
) -> Engine:
    """An exported file under `engine` (onnxruntime/ort or openvino) on `device` (auto, cpu,
    cuda); `precision` is the file's, from its metadata."""
    name = engine_name(engine)
    if name == "pytorch":
        raise UserError("the pytorch engine runs checkpoints, not .onnx files; use ort or openvino")
    if name == "openvino":
        if device == "cuda":
            raise UserError(
                "distill runs OpenVINO on the CPU only; use --device cpu or --engine ort"
            )
        return openvino_engine(path, precision, threads=threads)
    return onnxruntime_engine(path, precision, device=resolve_device(device), threads=threads)
