"""Reading bench.json: the records `distill bench --json` writes (export/benchmark.py `benchmark`).

A record times one file (an .onnx, or a .pt through a temporary ONNX export of it) under several
engines, precisions and batch sizes on one device. Every measurement carries a `noise` verdict:
a number measured while the machine was busy or with a long tail is shown flagged, not as fact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.memory import MAX_BATCH
from distill.report.records import as_float

# p99 beyond this many times p50 means the tail is interruptions (other processes, frequency
# changes), not the model: the median itself is then suspect.
NOISE_RATIO = 2.0


@dataclass(frozen=True)
class Measurement:
    """One engine at one precision and batch size, on one file."""

    file: str  # file name the record's model.path points at
    engine: str  # pytorch | onnxruntime | openvino | ...
    precision: str  # fp32 | bf16 | int8 | default | ...
    batch_size: int
    p50_ms: float
    p99_ms: float | None
    images_per_s: float  # bench's batch / mean time; batch / p50 where a record lacks it
    val_accuracy: float | None  # [0, 1], measured through this engine and precision
    noise: str | None  # why the number is not steady ("noisy: ..."); None when it is

    @property
    def line(self) -> tuple[str, str, str]:
        """What one line of the latency plot and one row of its table stands for."""
        return (self.file, self.engine, self.precision)


@dataclass(frozen=True)
class BenchRecord:
    """One `distill bench` run of one file on one device."""

    file: str
    device: str  # cpu | cuda: never drawn on one axis (different machines' worth of speed)
    precision: str  # the file's own precision
    hardware: str  # CPU model, or GPU name on cuda
    threads: int | None
    load: float | None  # 1-minute load average when measured (newer bench.json only)
    results: tuple[Measurement, ...]
    speedup: dict[int, float]  # batch size -> PyTorch p50 / onnxruntime p50, same run

    def find(self, engine: str, batch_size: int, precision: str | None = None):
        """The measurement of `engine` at `batch_size`, preferring `precision`; None if none."""
        rows = [r for r in self.results if r.engine == engine and r.batch_size == batch_size]
        return next((r for r in rows if r.precision == precision), rows[0] if rows else None)

    def speedup_noise(self, batch_size: int) -> str | None:
        """The noise of either measurement a speed-up ratio was computed from."""
        ort = self.find("onnxruntime", batch_size, self.precision)
        torch = self.find("pytorch", batch_size)
        return next((r.noise for r in (ort, torch) if r is not None and r.noise), None)


def noise_reason(row: dict[str, Any], threads: int | None, load: float | None) -> str | None:
    """ "noisy: p99 3.1 times p50 / load 2.6 on 2 threads", or None for a steady measurement.

    bench's own `noisy` verdict wins where present: it saw the load before and after each
    measurement, and its reason is repeated. Older files lack it; then a p99 over NOISE_RATIO
    times p50, or a record's load average above its thread count (other processes wanted the
    cores the timed threads ran on), says the same.
    """
    p50, p99 = as_float(row.get("p50_ms")), as_float(row.get("p99_ms"))
    ratio = p99 / p50 if p50 and p99 is not None else None
    long_tail = ratio is not None and ratio > NOISE_RATIO
    if "noisy" in row:  # bench's verdict, with its reason
        if not row["noisy"]:
            return None
        return f"noisy: {_text(row.get('noisy_why')) or 'marked noisy by `distill bench`'}"
    reasons = []
    if long_tail:
        reasons.append(f"p99 {ratio:.1f} times p50")
    if load is not None and threads and load > threads:
        reasons.append(f"load {load:.1f} on {threads} threads")
    return "noisy: " + " / ".join(reasons) if reasons else None


def _default_precision(engine: str, device: str, file_precision: str) -> str:
    # Records written before rows carried `precision`: export/benchmark.py ran PyTorch eager in
    # float32 on CPU and under bf16 autocast on CUDA, and onnxruntime in the file's precision.
    if engine == "pytorch":
        return "fp32" if device == "cpu" else "bf16"
    return file_precision if engine == "onnxruntime" else "default"


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    """A string field as a short line; anything else (a list, a table) is not one."""
    return (" ".join(value.split())[:120] or None) if isinstance(value, str) else None


def _positive(value: Any, upper: float = math.inf) -> float | None:
    """A number in (0, upper]: a time, a rate or a ratio; a negative time is no measurement."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    f = as_float(value)
    return f if f is not None and 0 < f <= upper else None


def _count(value: Any) -> int | None:
    f = _positive(value, MAX_BATCH)
    return int(f) if f is not None and f == int(f) else None


def _fraction(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    f = as_float(value) if ok else None
    return f if f is not None and 0 <= f <= 1 else None


def _record(rec: dict[str, Any]) -> BenchRecord | None:
    """One record of a bench.json, every field checked against its type and range: a field that
    is not what bench writes is left out (a row without a time, a list where a name belongs)."""
    model, env = _table(rec.get("model")), _table(rec.get("environment"))
    device = _text(env.get("device"))
    path = _text(model.get("path"))
    if not path or device not in ("cpu", "cuda"):
        return None
    file = Path(path).name
    precision = _text(model.get("precision")) or "fp32"
    threads = _count(env.get("threads"))
    loadavg = env.get("loadavg")
    load = _positive(loadavg[0]) if isinstance(loadavg, list) and loadavg else None
    results = []
    rows = rec.get("results")
    for row in rows if isinstance(rows, list) else []:
        row = _table(row)
        p50, batch = _positive(row.get("p50_ms")), _count(row.get("batch_size"))
        engine = _text(row.get("engine"))
        if not p50 or not batch or not engine:
            continue
        results.append(
            Measurement(
                file=file,
                engine=engine,
                precision=_text(row.get("precision"))
                or _default_precision(engine, device, precision),
                batch_size=batch,
                p50_ms=p50,
                p99_ms=_positive(row.get("p99_ms")),
                images_per_s=_positive(row.get("images_per_s")) or 1e3 * batch / p50,
                val_accuracy=_fraction(row.get("val_accuracy")),
                noise=noise_reason(row, threads, load),
            )
        )
    speedup = {
        b: r
        for k, v in _table(rec.get("speedup")).items()
        if (b := _count(k)) and (r := _positive(v))
    }
    hardware = _text(env.get("gpu") if device == "cuda" else env.get("cpu"))
    return BenchRecord(
        file=file,
        device=device,
        precision=precision,
        hardware=str(hardware or f"unknown {device.upper()}"),
        threads=threads,
        load=load,
        results=tuple(results),
        speedup=speedup,
    )


def read_bench(data: Any) -> tuple[BenchRecord, ...]:
    """Every usable record of a bench.json (a list of records, or one). A file benchmarked twice
    on one device keeps its later record: a rerun replaces a measurement, it does not add one."""
    records = data if isinstance(data, list) else [data]
    latest: dict[tuple[str, str], BenchRecord] = {}
    for rec in records:
        parsed = _record(rec) if isinstance(rec, dict) else None
        if parsed is not None and parsed.results:
            latest[(parsed.file, parsed.device)] = parsed
    return tuple(latest.values())


def batch1_latency(records: tuple[BenchRecord, ...]) -> dict[str, dict[str, Any]]:
    """File name -> {p50_ms, noise, speedup, speedup_noise, cpu, threads}: onnxruntime on CPU
    at batch 1 in the file's own precision, the models table's latency column."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.device != "cpu":
            continue  # CUDA numbers are not comparable with the CPU column
        row = rec.find("onnxruntime", 1, rec.precision)
        if row is not None:
            out[rec.file] = {
                "p50_ms": row.p50_ms,
                "noise": row.noise,
                "speedup": rec.speedup.get(1),
                "speedup_noise": rec.speedup_noise(1),
                "cpu": rec.hardware,
                "threads": rec.threads,
            }
        # An fp32 file's bench times its int8 sibling (NAME.int8.onnx) too: that row is the
        # sibling's latency, so the int8 file gets its point in the accuracy-vs-latency plot.
        int8 = rec.find("onnxruntime", 1, "int8")
        sibling = Path(rec.file).with_suffix("").name + ".int8.onnx"
        if rec.precision != "int8" and int8 is not None and int8.precision == "int8":
            out.setdefault(
                sibling,
                {
                    "p50_ms": int8.p50_ms,
                    "noise": int8.noise,
                    "speedup": None,
                    "speedup_noise": None,
                    "cpu": rec.hardware,
                    "threads": rec.threads,
                },
            )
    return out
