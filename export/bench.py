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

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import UserError
from export.engines import (
    ENGINES,
    OPENVINO_INSTALL,
    Engine,
    engine_name,
    onnxruntime_engine,
    openvino_available,
    openvino_engine,
    pytorch_engine,
    top1,
)
from export.machine import (
    cpu_flags,
    cpu_model,
    has_native_bf16,
    has_vnni,
    loadavg,
    peak_gflops,
    torch_threads,
)
from export.runtime import default_threads, resolve_device

NOISY_TAIL = 2.0  # p99/p50 above this: something else ran during the measurement
ACCURACY_TOLERANCE = 0.005  # the summary's engines may lose at most 0.5 points of top-1
SPINNING_NOTE = (
    "off: when engines alternate, onnxruntime's spinning idle threads take the cores the next "
    "engine needs"
)

__all__ = [
    "Timing",
    "benchmark",
    "check_bench_output",
    "measure",
    "parse_batch_sizes",
    "parse_engines",
    "write_bench_record",
]


@dataclass(frozen=True)
class Timing:
    """How long to measure each batch size."""

    warmup: int = 3  # runs per engine before timing (allocations, caches, lazy init)
    min_runs: int = 5  # timed runs per engine, at least
    max_runs: int = 200  # and at most
    min_seconds: float = 2.0  # keep alternating until each engine has run this long
    block_seconds: float = 0.25  # one engine runs this long before the next takes over
    probe_seconds: float = 0.3  # matmul peak probe, per precision

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_runs < 1 or self.max_runs < self.min_runs:
            raise UserError(f"timing {self} needs warmup >= 0 and 1 <= min_runs <= max_runs")
        if min(self.min_seconds, self.block_seconds, self.probe_seconds) < 0:
            raise UserError(f"timing {self}: seconds cannot be negative")


def parse_batch_sizes(text: str) -> list[int]:
    """Parse "1,32,256" into [1, 32, 256]."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 for b in sizes):
        raise UserError(f"batch sizes {text!r} should be positive integers, e.g. 1,32,256")
    return sizes


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


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}


def measure(
    runners: dict[str, Callable[[], object]], timing: Timing = Timing()
) -> dict[str, list[float]]:
    """Warm up every runner, then time them in alternating blocks; returns seconds per run.

    Blocks, not single runs: engines keep thread pools that stay awake for a while after a run,
    and on a small machine one engine's waking threads would steal the cores the other needs. A
    block of short runs starts with one untimed run that wakes its engine's pool (for runs
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


# ---------------------------------------------------------------------------------------------
# The files and the checkpoint behind them


@dataclass(frozen=True)
class _Files:
    """The exported files of one model, by precision, and the checkpoint they came from."""

    by_precision: dict[str, Path]
    meta: dict[str, Any]  # the metadata of the file benchmarked (or of the checkpoint's export)
    ckpt: dict[str, Any] | None
    ckpt_path: Path | None
    notes: list[str]


def _stem(path: Path) -> str:
    """m.onnx, m.int8.onnx, m.fp16.onnx -> m"""
    name = path.name.removesuffix(".onnx")
    for precision in ("int8", "fp16"):
        name = name.removesuffix(f".{precision}")
    return name


def _siblings(
    path: Path, sha: str | None, tta: bool, notes: list[str], *, skip_fp32: bool = False
) -> dict[str, Path]:
    """X.onnx, X.int8.onnx and X.fp16.onnx beside `path` (other than `path` itself), when
    exported from the same checkpoint (sha256) with the same TTA setting; others are skipped
    with a note."""
    from export.metadata import read_metadata

    found: dict[str, Path] = {}
    stem = _stem(path)
    for precision in ("fp32", "int8", "fp16"):
        candidate = path.with_name(
            stem + (".onnx" if precision == "fp32" else f".{precision}.onnx")
        )
        if candidate == path or not candidate.is_file() or (skip_fp32 and precision == "fp32"):
            continue
        try:
            meta = read_metadata(candidate)
        except UserError as e:
            notes.append(f"skipped {candidate.name}: {e}")
            continue
        same = sha is not None and meta.get("source_sha256") == sha
        if not same or bool(meta.get("tta")) != tta or meta.get("precision") != precision:
            notes.append(
                f"skipped {candidate.name}: not a {precision} export of the same checkpoint"
                + (" with the same TTA setting" if same else "")
            )
            continue
        found[precision] = candidate
    return found


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


def _resolve_files(
    path: Path, checkpoint: str | os.PathLike | None, int8: str | os.PathLike | None, tmp: Path
) -> _Files:
    from distill.budget import count_macs
    from distill.checkpoint import load_checkpoint, model_from_checkpoint
    from distill.files import file_sha256
    from export.graph import export_graph
    from export.metadata import read_metadata
    from export.wrappers import reference_module

    notes: list[str] = []
    if path.suffix == ".pt":
        ckpt_path: Path | None = path
        ckpt = load_checkpoint(path)
        onnx_path = tmp / "model.onnx"
        export_graph(reference_module(ckpt), ckpt["input_size"], onnx_path)
        sha = file_sha256(path)
        model = model_from_checkpoint(ckpt)
        meta = {
            key: ckpt[key] for key in ("classes", "input_size", "arch", "data") if key in ckpt
        } | {
            "precision": "fp32",
            "source_sha256": sha,
            "tta": False,
            "macs": count_macs(model, tuple(ckpt["input_size"])),
        }
        # A temporary fp32 export; X.int8.onnx / X.fp16.onnx beside the .pt join it.
        files = {"fp32": onnx_path}
        files |= _siblings(path.with_suffix(".onnx"), sha, False, notes, skip_fp32=True)
    elif path.suffix == ".onnx":
        meta = read_metadata(path)
        files = {meta.get("precision", "fp32"): path}
        files |= _siblings(path, meta.get("source_sha256"), bool(meta.get("tta")), notes)
        if checkpoint:
            ckpt_path = Path(checkpoint)
        else:
            ckpt_path, why = find_checkpoint(path, meta)
            if why:
                notes.append(why)
        ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    else:
        raise UserError(f"{path} is neither .onnx nor .pt; pass an exported model or checkpoint")
    if int8 is not None:
        given = read_metadata(int8)
        if given.get("precision") != "int8":
            raise UserError(
                f"--int8 {int8} is a {given.get('precision', 'fp32')} file; pass an int8 export"
            )
        if given.get("source_sha256") != meta.get("source_sha256"):
            notes.append(f"{Path(int8).name} was exported from another checkpoint than {path.name}")
        files["int8"] = Path(int8)
    if "macs" not in meta and ckpt is not None:
        factor = 2 if meta.get("tta") else 1
        meta["macs"] = count_macs(model_from_checkpoint(ckpt), tuple(ckpt["input_size"])) * factor
    return _Files(files, meta, ckpt, ckpt_path, notes)


# ---------------------------------------------------------------------------------------------
# Engines for one run


def _engines(
    files: _Files, names: list[str], device: str, threads: int, notes: list[str]
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
    if "onnxruntime" in names:
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
        raise UserError(
            f"no engine of {', '.join(names)} can run {', '.join(p.name for p in by.values())} "
            "here; add onnxruntime to --engines or pass the checkpoint"
        )
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark


def benchmark(
    path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1, 32, 256),
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

    `device`: cpu, cuda, or auto (CUDA when onnxruntime and PyTorch can both use a GPU, else
    the CPU, said in the note). `engines`: names or "pytorch,onnxruntime,openvino"; None: all
    that are installed. `int8`: an int8 file that is not the sibling. `accuracy`: measure each
    engine's top-1 on the model's validation split (rebuilt from the checkpoint's data record,
    or from `data`); without the data the accuracy stays empty and the note says why.

    Returns a JSON-ready record: model, environment, timing, results (one row per engine,
    precision and batch size), accuracy, speedup (batch size -> PyTorch fp32 p50 / onnxruntime
    fp32 p50), summary and note.
    """
    from distill.files import sweep_stale, temp_dir

    path = Path(path)
    notes: list[str] = []
    device = resolve_device(device, say=notes.append)
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UserError(f"batch sizes {list(batch_sizes)} must be positive integers, e.g. 1,32,256")
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
        files = _resolve_files(path, checkpoint, int8, tmp)
        notes += files.notes
        engine_list = _engines(files, names, device, threads, notes)
        val = _accuracies(files, engine_list, accuracy, data, data_root, cache_dir, notes, say)
        say("probing peak GFLOP/s")
        peaks = peak_gflops(device, threads, timing.probe_seconds)
        limit = max(threads, os.cpu_count() or threads)
        env = environment(device, threads, engine_list, peaks, limit)
        results = []
        rng = np.random.default_rng(0)
        for bs in batch_sizes:
            say(f"batch {bs}")
            x = rng.random((bs, *files.meta["input_size"]), dtype=np.float32)
            runners = {e.label: e.prepare(x) for e in engine_list}
            before = loadavg()
            times = measure(runners, timing)
            after = loadavg()
            for e in engine_list:
                results.append(
                    _row(e, bs, times[e.label], before, after, limit, val, files.meta, peaks)
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
        "speedup": _speedup(results, batch_sizes),
        "summary": summarize(results),
        "note": "; ".join(notes) or None,
    }


def _accuracies(
    files: _Files,
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


def _row(
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
    loads = [v for v in (before, after) if v is not None]
    why = []
    if tail > NOISY_TAIL:
        why.append(f"p99/p50 {tail:.1f} > {NOISY_TAIL:g}")
    if loads and max(loads) > load_limit:
        why.append(f"load {max(loads):.2f} > {load_limit}")
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


def _speedup(results: list[dict], batch_sizes: Sequence[int]) -> dict[str, float]:
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
        "peak_probe": "1024x1024 matmuls at the benchmark's thread count, best of PyTorch and "
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
