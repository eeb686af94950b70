"""What the CPU can do: its model and instruction-set flags, native bf16, VNNI for int8, the load
other processes put on it, and a short matmul probe of its peak arithmetic rate."""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from functools import cache

import numpy as np
import torch

# Flags that decide which kernels the engines can use: AVX2/AVX-512 for fp32, VNNI/AMX for int8
# dot products, AVX512-BF16/AMX for native bf16.
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "sve",
    "bf16",
    "i8mm",
)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:  # x86, ARM
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> list[str]:
    """The instruction-set flags that matter here, as /proc/cpuinfo lists them."""
    flags = _cpuinfo()[1]
    return [f for f in RELEVANT_FLAGS if f in flags]


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def has_vnni() -> bool:
    """VNNI (or AMX) multiplies uint8 by int8 into int32 without an intermediate int16."""
    return bool(set(VNNI_FLAGS) & _cpuinfo()[1])


def has_native_bf16() -> bool:
    """oneDNN runs bf16 natively (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def int8_reduce_range() -> bool:
    """Whether int8 weights should use 7 bits on this CPU.

    Without VNNI, x86 multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds
    pairs of products into int16 and saturates when both operands are near full range; 7-bit
    weights (onnxruntime's `reduce_range`) keep every pair sum inside int16. With VNNI the
    products go straight to int32, and other architectures have no such instruction.
    """
    return is_x86() and not has_vnni()


def loadavg() -> float | None:
    """The 1-minute load average (runnable threads, ours included), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _rate(run, flops: float, seconds: float, sync=lambda: None) -> float:
    """GFLOP/s of `run`'s fastest call (one call = `flops`) over `seconds`, after one untimed
    call (kernels pick and cache their blocking); at least two timed calls however short
    `seconds` is. The fastest, not the mean: this is a ceiling, and on a shared host another
    process's burst only ever slows a call (a mean once put a training step at 109% of it)."""
    run()
    sync()
    count, start, best = 0, time.perf_counter(), float("inf")
    while True:
        t0 = time.perf_counter()
        run()
        sync()  # sync point on CUDA: kernels run asynchronously
        now = time.perf_counter()
        best, count = min(best, now - t0), count + 1
        if now - start >= seconds and count >= 2:
            return flops / best / 1e9


def ort_matmul_gflops(threads: int, seconds: float = 0.3, n: int = 1024) -> float:
    """GFLOP/s of an fp32 n x n MatMul in onnxruntime (its own MLAS kernels)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.random((n, n), dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    a = rng.random((n, n), dtype=np.float32)
    return _rate(lambda: session.run(None, {"a": a}), 2 * n**3, seconds)


def peak_gflops(device: str, threads: int, seconds: float = 0.3) -> dict[str, float]:
    """This machine's arithmetic ceiling per precision the engines compute in: the best of the
    matmul kernels at hand at `threads` threads. fp32 on CPU takes the better of PyTorch's
    (MKL, which runs AVX2 code on AMD CPUs) and onnxruntime's (MLAS); bf16 where native (oneDNN)
    and fp16/bf16 on CUDA come from PyTorch. int8 is not probed."""
    peaks = {"fp32": matmul_peak_gflops(torch.float32, threads, device, seconds)}
    if device == "cuda":
        peaks["fp16"] = matmul_peak_gflops(torch.float16, threads, device, seconds)
        if torch.cuda.is_bf16_supported():
            peaks["bf16"] = matmul_peak_gflops(torch.bfloat16, threads, device, seconds)
    else:
        peaks["fp32"] = max(peaks["fp32"], ort_matmul_gflops(threads, seconds))
        if has_native_bf16():
            peaks["bf16"] = matmul_peak_gflops(torch.bfloat16, threads, device, seconds)
    return {k: round(v, 1) for k, v in peaks.items()}


def matmul_peak_gflops(
    dtype: torch.dtype, threads: int, device: str = "cpu", seconds: float = 0.3, n: int = 1024
) -> float:
    """GFLOP/s of repeated n x n matrix products in PyTorch: the rate a well-blocked kernel
    reaches on this machine at `threads` threads.

    On CUDA a 1024-cube product takes microseconds, so one product per synchronisation times
    the launch and the sync; there the probe multiplies 8192-cubes, 20 per synchronisation."""
    per_sync = 1
    if device == "cuda":
        n, per_sync = max(n, 8192), 20
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> None:
        for _ in range(per_sync):
            torch.mm(a, b, out=c)

    with torch_threads(threads), torch.inference_mode():
        return _rate(run, 2 * n**3 * per_sync, seconds, sync)
