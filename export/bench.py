"""`distill bench`: onnxruntime vs PyTorch eager latency, measured in the same run (SPEC 7, 10).

Per batch size: warm-up runs of both engines, then timed runs that alternate between the two
engines (ORT, PyTorch, ORT, ...) so that load from other processes and clock changes hit both
alike; p50/p90/p99 latency and images/s per engine, and the ratio of p50 latencies.

CPU: onnxruntime's CPU provider with the tuned session (export/runtime.py) vs the model in eval
mode under `torch.inference_mode`, both on the same number of threads. CUDA (when present):
onnxruntime's CUDA provider with IO binding (input and output stay on the GPU) vs PyTorch with
bf16 autocast and channels_last; every timed run ends with a synchronisation.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from distill.errors import UserError
from export.runtime import default_threads, make_session

ENGINES = ("onnxruntime", "pytorch")


@dataclass(frozen=True)
class Timing:
    """How long to measure each batch size."""

    warmup: int = 3  # runs per engine before timing (allocations, caches, lazy init)
    min_runs: int = 5  # timed runs per engine, at least
    max_runs: int = 200  # and at most
    min_seconds: float = 2.0  # keep alternating until each engine has run this long
    block_seconds: float = 0.25  # one engine runs this long before the other takes over


def parse_batch_sizes(text: str) -> list[int]:
    """Parse "1,32,256" into [1, 32, 256]."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 for b in sizes):
        raise UserError(f"batch sizes {text!r} should be positive integers, e.g. 1,32,256")
    return sizes


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}


def measure(
    runners: dict[str, Callable[[], None]], timing: Timing = Timing()
) -> dict[str, list[float]]:
    """Warm up every runner, then time them in alternating blocks; returns seconds per run.

    Blocks, not single runs: both engines keep thread pools that spin for a while after a run,
    and on a small machine one engine's spinning threads would steal the cores the other needs.
    A block of short runs starts with one untimed run that wakes its engine's pool (for runs
    longer than a block, waking is noise next to the run and is skipped). A runner must return
    only when its work is done (CUDA runners synchronise inside).
    """
    wake: dict[str, bool] = {}
    for name, run in runners.items():
        last = 0.0
        for _ in range(timing.warmup):
            start = time.perf_counter()
            run()
            last = time.perf_counter() - start
        wake[name] = last < timing.block_seconds
    times: dict[str, list[float]] = {name: [] for name in runners}
    while True:
        for name, run in runners.items():
            if len(times[name]) >= timing.max_runs:
                continue
            if wake[name]:
                run()
            block_start = time.perf_counter()
            while True:
                start = time.perf_counter()
                run()
                end = time.perf_counter()
                times[name].append(end - start)
                if end - block_start >= timing.block_seconds or len(times[name]) >= timing.max_runs:
                    break
        enough = all(
            len(t) >= timing.min_runs and sum(t) >= timing.min_seconds for t in times.values()
        )
        if enough or all(len(t) >= timing.max_runs for t in times.values()):
            return times


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def ort_runner(session: ort.InferenceSession, x: np.ndarray, device: str) -> Callable[[], None]:
    name = session.get_inputs()[0].name
    if device == "cpu":
        return lambda: session.run(None, {name: x})
    # IO binding: the input is copied to the GPU once, the output stays there, so the timing is
    # the model's, not PCIe transfers'.
    binding = session.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    binding.bind_output(session.get_outputs()[0].name, "cuda")

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # sync point: the kernels have finished

    return run


def torch_runner(model: torch.nn.Module, x: np.ndarray, device: str) -> Callable[[], None]:
    if device == "cpu":
        xt = torch.from_numpy(x)

        def run() -> None:
            with torch.inference_mode():
                model(xt)

        return run
    model = model.to("cuda", memory_format=torch.channels_last)
    xt = torch.from_numpy(x).to("cuda").contiguous(memory_format=torch.channels_last)

    def run_cuda() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(xt)
        torch.cuda.synchronize()  # sync point: the kernels have finished

    torch.cuda.synchronize()
    return run_cuda


def find_checkpoint(onnx_path: Path, meta: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The checkpoint the file was exported from, if it still sits beside it unchanged."""
    from distill.files import file_sha256

    name = meta.get("source")
    candidate = onnx_path.with_name(name) if name else None
    if candidate is None or not candidate.is_file():
        return None, (
            f"no PyTorch baseline: the source checkpoint {name or '?'} is not beside "
            f"{onnx_path.name}; pass the .pt (or --checkpoint) to compare"
        )
    if file_sha256(candidate) != meta.get("source_sha256"):
        return None, (
            f"no PyTorch baseline: {candidate} changed since the export (sha256 differs); "
            "pass the .pt to compare"
        )
    return candidate, None


def benchmark(
    path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1, 32, 256),
    device: str = "cpu",
    threads: int | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    timing: Timing = Timing(),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Latency of an exported file (.onnx) or a checkpoint (.pt, exported to a temp file first)
    under onnxruntime, next to PyTorch eager when the checkpoint is at hand.

    Returns a JSON-ready dict: model, environment, results (one row per engine and batch size)
    and speedup (batch size -> PyTorch p50 / onnxruntime p50).
    """
    from distill.checkpoint import load_checkpoint, model_from_checkpoint
    from export.onnx import Normalized, export_graph, read_metadata

    path = Path(path)
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; pass cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA GPU is visible to PyTorch here; use --device cpu")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise UserError(f"batch sizes {list(batch_sizes)} must be positive integers, e.g. 1,32,256")
    threads = threads or default_threads()
    if threads < 1:
        raise UserError(f"--threads {threads} must be at least 1")
    say = progress or (lambda _msg: None)

    note = None
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        if path.suffix == ".pt":
            ckpt_path: Path | None = path
            ckpt = load_checkpoint(path)
            onnx_path = Path(tmp) / "model.onnx"
            say("exporting to a temporary ONNX file")
            export_graph(
                Normalized(model_from_checkpoint(ckpt), ckpt["mean"], ckpt["std"]),
                ckpt["input_size"],
                onnx_path,
            )
            model_info = {
                "arch": ckpt["arch"],
                "precision": "fp32",
                "input_size": list(ckpt["input_size"]),
            }
        elif path.suffix == ".onnx":
            onnx_path = path
            meta = read_metadata(path)
            model_info = {
                "arch": meta.get("arch"),
                "precision": meta.get("precision", "fp32"),
                "input_size": meta["input_size"],
            }
            if checkpoint:
                ckpt_path = Path(checkpoint)
            else:
                ckpt_path, note = find_checkpoint(path, meta)
            ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
        else:
            raise UserError(
                f"{path} is neither .onnx nor .pt; pass an exported model or checkpoint"
            )

        session = make_session(onnx_path, device=device, threads=threads)
        reference = None
        if ckpt is not None:
            reference = Normalized(model_from_checkpoint(ckpt), ckpt["mean"], ckpt["std"]).eval()
        results, speedup = [], {}
        rng = np.random.default_rng(0)
        with torch_threads(threads):
            for bs in batch_sizes:
                say(f"batch {bs}")
                x = rng.random((bs, *model_info["input_size"]), dtype=np.float32)
                runners = {"onnxruntime": ort_runner(session, x, device)}
                if reference is not None:
                    runners["pytorch"] = torch_runner(reference, x, device)
                times = measure(runners, timing)
                for engine, secs in times.items():
                    row = {"engine": engine, "batch_size": bs, **percentiles(secs)}
                    row["mean_ms"] = statistics.fmean(secs) * 1e3
                    row["images_per_s"] = bs / statistics.fmean(secs)
                    row["runs"] = len(secs)
                    results.append(row)
                if "pytorch" in times:
                    speedup[str(bs)] = float(
                        np.median(times["pytorch"]) / np.median(times["onnxruntime"])
                    )
        size = onnx_path.stat().st_size

    model_info.update(
        {"path": str(path), "onnx_bytes": size, "checkpoint": str(ckpt_path) if ckpt_path else None}
    )
    return {
        "model": model_info,
        "environment": environment(session, device, threads),
        "timing": {
            "warmup": timing.warmup,
            "min_runs": timing.min_runs,
            "min_seconds": timing.min_seconds,
            "block_seconds": timing.block_seconds,
            "order": "engines alternate in blocks",
        },
        "results": results,
        "speedup": speedup,
        "note": note,
    }


def environment(session: ort.InferenceSession, device: str, threads: int) -> dict[str, Any]:
    from distill.checkpoint import library_versions

    env = {
        "device": device,
        "threads": threads,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "provider": session.get_providers()[0],
        "session": {
            "graph_optimization_level": str(session.get_session_options().graph_optimization_level),
            "intra_op_num_threads": session.get_session_options().intra_op_num_threads,
            "execution_mode": str(session.get_session_options().execution_mode),
        },
        "pytorch_mode": "eager, inference_mode, float32"
        if device == "cpu"
        else "eager, inference_mode, bf16 autocast, channels_last",
        "versions": library_versions(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env
