"""`distill bench`: every engine and precision side by side, measured in one run (SPEC 7, 11).

Engines (export/engines.py): PyTorch eager (fp32, and bf16 autocast where the CPU has native
bf16), onnxruntime on the fp32 file and on its int8 sibling (X.int8.onnx beside X.onnx), and
OpenVINO when installed, in its default precision, pinned to f32, and on the int8 file. On CUDA:
PyTorch fp32 against onnxruntime's fp32 graph, PyTorch bf16/fp16 autocast against the fp16
sibling file when there is one: like with like, every row labelled by its precision.

Per batch size: warm-up runs of every engine, then timed runs in alternating blocks (A, B, C,
A, B, C, ...) so that load from other processes and clock changes hit all engines alike;
p50/p90/p99 latency and images/s per engine. Each row also carries the engine's validation top-1
on the model's own validation split (when the data is on this machine), the GFLOP/s it achieved
next to the CPU's peak for its precision (a matmul probe in the same run), and the load average
around it: a row whose p99/p50 exceeds 2, or that ran while the load exceeded the cores, is
marked noisy and printed as such. The summary names the fastest engine whose accuracy is within
0.5 points of fp32's.

onnxruntime runs with intra-op spinning off here: its idle workers otherwise spin for a while
after each run, and when engines alternate those spinning threads take the cores the next
engine's threads need, which slows the other engine, not onnxruntime.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import UserError, first_line
from distill.memory import MAX_BATCH, TooLarge, out_of_memory, require
from export.engines import (
    OPENVINO_INSTALL,
    Engine,
    onnxruntime_engine,
    openvino_engine,
    parse_engines,
    pytorch_engine,
    top1,
)
from export.footprint import bench_bytes
from export.machine import has_native_bf16, loadavg, peak_gflops, torch_threads
from export.model_files import ModelFiles, resolve_files
from export.record import environment, result_row, speedup, summarize
from export.runtime import bench_device, default_threads
from export.timing import Timing, measure

SPINNING_NOTE = (
    "off: when engines alternate, onnxruntime's spinning idle threads take the cores the next "
    "engine needs"
)


# ---------------------------------------------------------------------------------------------
# Engines for one run


def _engines(
    files: ModelFiles,
    names: list[str],
    device: str,
    threads: int,
    notes: list[str],
    onnxruntime_here: bool = True,
) -> list[Engine]:
    """Every engine and precision that can run here, in the order the rows are printed."""
    from export.wrappers import reference_module

    out: list[Engine] = []
    by = files.by_precision
    if "pytorch" in names and files.ckpt is not None:
        module = reference_module(files.ckpt, tta=bool(files.meta.get("tta")))
        if device == "cuda":
            precisions = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        else:
            precisions = ["fp32"] + (["bf16"] if has_native_bf16() else [])
            if not has_native_bf16():
                notes.append(
                    "no PyTorch bf16 row: this CPU has no native bf16 (it would be emulated)"
                )
        out += [pytorch_engine(module, p, device=device) for p in precisions]
    if "onnxruntime" in names and onnxruntime_here:
        wanted = ("fp32", "fp16") if device == "cuda" else ("fp32", "int8")
        for precision in wanted:
            if precision in by:
                out.append(
                    onnxruntime_engine(
                        by[precision], precision, device=device, threads=threads, spinning=False
                    )
                )
        if device == "cuda" and "int8" in by:
            notes.append(
                "the int8 file is left out of a CUDA benchmark (its QDQ graph is meant for "
                "CPUs); bench it with --device cpu"
            )
    if "openvino" in names:
        if device == "cuda":
            notes.append("OpenVINO runs on the CPU: left out of a CUDA benchmark")
        elif "fp32" in by:
            default = openvino_engine(by["fp32"], "fp32", threads=threads)
            out.append(default)
            if default.arithmetic != "fp32":  # else f32 is the default: the same row twice
                out.append(openvino_engine(by["fp32"], "fp32", threads=threads, f32=True))
        if device != "cuda" and "int8" in by:
            out.append(openvino_engine(by["int8"], "int8", threads=threads))
    if not out:
        why = "" if onnxruntime_here else f" ({notes[0]})"
        raise UserError(
            f"no engine of {', '.join(names)} can run {', '.join(p.name for p in by.values())} "
            f"here{why}; add onnxruntime to --engines or pass the checkpoint"
        )
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark


def benchmark(
    path: str | os.PathLike,
    batch_sizes: Sequence[int],
    device: str = "cpu",
    threads: int | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    engines: str | Sequence[str] | None = None,
    int8: str | os.PathLike | None = None,
    accuracy: bool = True,
    data: str | None = None,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    timing: Timing = Timing(),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Latency, throughput, accuracy and GFLOP/s of every engine on an exported file (.onnx, its
    siblings X.int8.onnx / X.fp16.onnx beside it) or a checkpoint (.pt, exported to a temp file
    first), measured in one run.

    `device`: cpu, cuda (PyTorch's GPU; onnxruntime joins when its CUDA provider can run
    there, else it is left out, said in the note), or auto (CUDA when onnxruntime and PyTorch
    can both use a GPU, else the CPU, said in the note). `engines`: names or
    "pytorch,onnxruntime,openvino"; None: all that are installed. `int8`: an int8 file that
    is not the sibling. `accuracy`: measure each engine's top-1 on the model's validation
    split (rebuilt from the checkpoint's data record, or from `data`); without the data the
    accuracy stays empty and the note says why.

    Returns a JSON-ready record: model, environment, timing, results (one row per engine,
    precision and batch size), accuracy, speedup (batch size -> PyTorch fp32 p50 / onnxruntime
    fp32 p50), summary and note.
    """
    from distill.files import sweep_stale, temp_dir

    path = Path(path)
    notes: list[str] = []
    device, onnxruntime_here = bench_device(device, say=notes.append)
    if not batch_sizes or any(not 0 < int(b) <= MAX_BATCH for b in batch_sizes):
        raise UserError(
            f"batch sizes {list(batch_sizes)} must be integers from 1 to {MAX_BATCH:,}, "
            "e.g. 1,32,256"
        )
    threads = threads or default_threads()
    if threads < 1:
        raise UserError(f"--threads {threads} must be at least 1")
    names = parse_engines(engines)
    if "openvino" not in names and engines is None:
        notes.append(f"OpenVINO is not installed; {OPENVINO_INSTALL} adds it")
    say = progress or (lambda _msg: None)
    sweep_stale()

    with temp_dir("bench") as tmp, torch_threads(threads):
        say("reading the model")
        files = resolve_files(path, checkpoint, int8, tmp)
        notes += files.notes
        engine_list = _engines(files, names, device, threads, notes, onnxruntime_here)
        _check_memory(files, engine_list, max(batch_sizes), device)
        val = _accuracies(files, engine_list, accuracy, data, data_root, cache_dir, notes, say)
        say("probing peak GFLOP/s")
        peaks = peak_gflops(device, threads, timing.probe_seconds)
        limit = max(threads, os.cpu_count() or threads)
        env = environment(device, threads, engine_list, peaks, limit)
        results = []
        rng = np.random.default_rng(0)
        # Each batch size times every engine for at least min_seconds: say what is left.
        per_size = len(engine_list) * timing.min_seconds
        for i, bs in enumerate(batch_sizes):
            left = (len(batch_sizes) - i) * per_size
            say(
                f"batch {bs} ({i + 1} of {len(batch_sizes)}: {len(engine_list)} engines, "
                f"at least {left:.0f} s of timing left)"
            )
            try:
                x = rng.random((bs, *files.meta["input_size"]), dtype=np.float32)
                runners = {e.label: e.prepare(x) for e in engine_list}
                before = loadavg()
                times = measure(runners, timing)
                after = loadavg()
            except Exception as e:  # the estimate is a lower bound: the engines may need more
                if not out_of_memory(e):
                    raise
                raise TooLarge(
                    f"timing at batch {bs:,} ran out of memory ({first_line(e, 80)}); lower the "
                    "largest batch size (--batch-sizes)"
                ) from None
            for e in engine_list:
                results.append(
                    result_row(e, bs, times[e.label], before, after, limit, val, files.meta, peaks)
                )
        sizes = {p: f.stat().st_size for p, f in files.by_precision.items()}

    precision = files.meta.get("precision", "fp32")
    model = {
        "path": str(path),
        "arch": files.meta.get("arch"),
        "precision": precision,
        "input_size": list(files.meta["input_size"]),
        "onnx_bytes": sizes.get(precision, next(iter(sizes.values()))),
        "checkpoint": str(files.ckpt_path) if files.ckpt_path else None,
        "macs": files.meta.get("macs"),
        "tta": bool(files.meta.get("tta")),
        "files": {p: str(f) for p, f in files.by_precision.items()}
        | ({"fp32": "(a temporary export of the checkpoint)"} if path.suffix == ".pt" else {}),
    }
    return {
        "model": model,
        "environment": env,
        "timing": asdict(timing)
        | {"order": "engines alternate in blocks", "onnxruntime_spinning": SPINNING_NOTE},
        "results": results,
        "accuracy": val.get("info"),
        "speedup": speedup(results, batch_sizes),
        "summary": summarize(results),
        "note": "; ".join(notes) or None,
    }


def _check_memory(files: ModelFiles, engines: list[Engine], batch: int, device: str) -> None:
    """Refuse, before any engine runs, a batch size the engines cannot hold together."""
    graph = files.by_precision.get("fp32") or next(iter(files.by_precision.values()))
    need = bench_bytes(graph, math.prod(files.meta["input_size"]), batch, engines, device)
    require(
        need,
        f"timing {len(engines)} engines at batch {batch:,}",
        "lower the largest batch size (--batch-sizes)",
        device,
    )


def _accuracies(
    files: ModelFiles,
    engine_list: list[Engine],
    wanted: bool,
    data: str | None,
    data_root: Path | None,
    cache_dir: Path | None,
    notes: list[str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """label -> top-1 on the validation split, and "info" (which images); empty without data."""
    from export.checks import load_check_images

    if not wanted:
        return {"info": {"images": 0, "why": "not asked for"}}
    record = files.ckpt or files.meta
    images = load_check_images(record, data, data_root=data_root, cache_dir=cache_dir)
    if not images.real:
        why = images.description.removeprefix("RANDOM images (").removesuffix(")")
        notes.append(f"accuracy not measured: {why}")
        return {"info": {"images": 0, "why": why}}
    out: dict[str, Any] = {"info": {"images": len(images.val_images), "source": images.description}}
    for e in engine_list:
        say(f"accuracy of {e.label} on {len(images.val_images):,} validation images")
        out[e.label] = top1(e, images.val_images, images.val_labels)
    return out
