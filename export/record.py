"""The record `distill bench` returns and writes: one row per engine, precision and batch size
(latency percentiles, images/s, accuracy, GFLOP/s against the peak, load and the noisy flag),
the speed-ups, the summary (the fastest engine within the accuracy tolerance), the environment
the numbers were taken in, and the output rule for its JSON file.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from export.engines import Engine
from export.machine import cpu_flags, cpu_model, has_native_bf16, has_vnni
from export.timing import percentiles

NOISY_TAIL = 2.0  # p99/p50 above this: something else ran during the measurement
ACCURACY_TOLERANCE = 0.005  # the summary's engines may lose at most 0.5 points of top-1


def result_row(
    e: Engine,
    batch_size: int,
    secs: list[float],
    before: float | None,
    after: float | None,
    load_limit: int,
    val: dict[str, Any],
    meta: dict[str, Any],
    peaks: dict[str, float],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "engine": e.name,
        "precision": e.precision,
        "arithmetic": e.arithmetic,
        "batch_size": batch_size,
        **percentiles(secs),
    }
    mean = statistics.fmean(secs)
    row |= {"mean_ms": mean * 1e3, "images_per_s": batch_size / mean, "runs": len(secs)}
    tail = row["p99_ms"] / row["p50_ms"]
    # The load limit is the larger of threads and cores: up to the core count every runnable
    # thread (ours included) has a core; above it, someone waited for one during the timing.
    # The 1-minute load average trails by a minute: a load that was high before the timing and
    # fell during it is work that had ended (a training stage just before a pipeline's bench),
    # so only a load that held or rose counts.
    why = []
    if tail > NOISY_TAIL:
        why.append(f"p99/p50 {tail:.1f} > {NOISY_TAIL:g}")
    if after is not None and after > load_limit and (before is None or after >= before - 0.05):
        why.append(f"load {after:.2f} > {load_limit}")
    macs = meta.get("macs")
    row |= {
        "p99_over_p50": round(tail, 3),
        "loadavg_before": before,
        "loadavg_after": after,
        "noisy": bool(why),
        "noisy_why": ", ".join(why) or None,
        "val_accuracy": val.get(e.label),
        "gflops": round(2 * macs * row["images_per_s"] / 1e9, 2) if macs else None,
        "peak_gflops": peaks.get(e.arithmetic),
    }
    return row


def _p50(results: list[dict], engine: str, precision: str, bs: int) -> float | None:
    for r in results:
        if (r["engine"], r["precision"], r["batch_size"]) == (engine, precision, bs):
            return r["p50_ms"]
    return None


def speedup(results: list[dict], batch_sizes: Sequence[int]) -> dict[str, float]:
    out = {}
    for bs in batch_sizes:
        torch_p50 = _p50(results, "pytorch", "fp32", bs)
        ort_p50 = _p50(results, "onnxruntime", "fp32", bs)
        if torch_p50 and ort_p50:
            out[str(bs)] = float(torch_p50 / ort_p50)
    return out


def summarize(results: list[dict]) -> dict[str, Any]:
    """Per batch size, the fastest engine (by p50) whose validation top-1 is within 0.5 points
    of fp32's (PyTorch fp32's, else onnxruntime fp32's), with its speed-up over PyTorch eager
    fp32. Without accuracies only fp32 engines qualify (their parity with PyTorch was checked at
    export), and the summary says so."""
    reference = next(
        (
            r
            for engine in ("pytorch", "onnxruntime")
            for r in results
            if (r["engine"], r["precision"]) == (engine, "fp32") and r["val_accuracy"] is not None
        ),
        None,
    )
    if reference is not None:
        floor = reference["val_accuracy"] - ACCURACY_TOLERANCE
        candidates = [
            r
            for r in results
            if r["val_accuracy"] is not None and r["val_accuracy"] >= floor - 1e-9
        ]
        basis = (
            f"fastest within {100 * ACCURACY_TOLERANCE:.1f} points of {reference['engine']} fp32's "
            f"validation top-1 ({reference['val_accuracy']:.2%})"
        )
    else:
        candidates = [r for r in results if r["arithmetic"] == "fp32"]
        basis = "accuracy not measured: fastest fp32 engine (parity-checked at export)"
    by_batch: dict[str, Any] = {}
    for bs in dict.fromkeys(r["batch_size"] for r in results):
        rows = [r for r in candidates if r["batch_size"] == bs]
        if not rows:
            continue
        best = min(rows, key=lambda r: r["p50_ms"])
        torch_p50 = _p50(results, "pytorch", "fp32", bs)
        by_batch[str(bs)] = {
            "engine": best["engine"],
            "precision": best["precision"],
            "p50_ms": best["p50_ms"],
            "images_per_s": best["images_per_s"],
            "val_accuracy": best["val_accuracy"],
            "speedup_vs_pytorch_fp32": torch_p50 / best["p50_ms"] if torch_p50 else None,
            "noisy": best["noisy"],
        }
    return {
        "basis": basis,
        "tolerance": ACCURACY_TOLERANCE,
        "reference_accuracy": reference["val_accuracy"] if reference else None,
        "by_batch_size": by_batch,
    }


def environment(
    device: str, threads: int, engine_list: list[Engine], peaks: dict[str, float], limit: int
) -> dict[str, Any]:
    from distill.checkpoint import library_versions

    versions = library_versions()
    if any(e.name == "openvino" for e in engine_list):
        import openvino

        versions["openvino"] = openvino.get_version().split("-")[0]
    ort_engines = [e for e in engine_list if e.name == "onnxruntime"]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    env: dict[str, Any] = {
        "device": device,
        "threads": threads,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "native_bf16": has_native_bf16(),
        "vnni": has_vnni(),
        "loadavg": [round(v, 2) for v in load] if load else None,
        "load_limit": limit,
        "peak_gflops": peaks,
        "peak_probe": "8192x8192 matmuls, 20 per synchronisation"
        if device == "cuda"
        else "1024x1024 matmuls at the benchmark's thread count, best of PyTorch and "
        "onnxruntime for fp32 on CPU",
        "provider": ort_engines[0].detail.split(",")[0] if ort_engines else None,
        "onnxruntime_session": {
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "execution_mode": "ORT_SEQUENTIAL",
            "intra_op_num_threads": threads,
            "allow_spinning": "0",
        },
        "engines": [
            {
                "engine": e.name,
                "precision": e.precision,
                "arithmetic": e.arithmetic,
                "detail": e.detail,
            }
            for e in engine_list
        ],
        "versions": versions,
        "platform": platform.platform(),
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        # TF32 makes PyTorch's "fp32" convolutions and matmuls run on tensor cores in 19 bits.
        env["tf32"] = {
            "cudnn": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    return env


# ---------------------------------------------------------------------------------------------
# Writing the record


def check_bench_output(path: str | os.PathLike, force: bool = False) -> Path:
    """Check a --json output before any benchmarking: a .json path that can be written and is
    not an existing file (unless `force`)."""
    from distill.files import check_output

    return check_output(path, force, (".json",), flag="--json")


def write_bench_record(
    record: dict[str, Any], path: str | os.PathLike, force: bool = False
) -> Path:
    """Write the record as JSON, atomically, under the output rule (checked again here: call
    `check_bench_output` before the benchmark too, so a bad path fails before the work)."""
    import json

    from distill.files import atomic_write_text

    path = check_bench_output(path, force)
    return atomic_write_text(path, json.dumps(record, indent=2) + "\n")
