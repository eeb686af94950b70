"""Reading bench.json: the records `distill bench --json` writes (export/bench.py `benchmark`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.report.models import as_float


def bench_rows(bench: Any) -> dict[str, dict[str, Any]]:
    """File name -> {p50_ms, speedup, cpu, threads}: onnxruntime on CPU at batch 1, from the
    records `distill bench --json` writes (export/bench.py `benchmark`). A `.pt` record counts
    too: bench times a checkpoint through a temporary ONNX export of it."""
    records = bench if isinstance(bench, list) else [bench]
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        if not isinstance(rec, dict):
            continue
        model, env = rec.get("model") or {}, rec.get("environment") or {}
        if env.get("device") != "cpu" or not model.get("path"):
            continue  # CUDA numbers are not comparable with the CPU column
        for row in rec.get("results") or []:
            p50 = as_float(row.get("p50_ms"))
            if row.get("engine") == "onnxruntime" and row.get("batch_size") == 1 and p50:
                out[Path(str(model["path"])).name] = {
                    "p50_ms": p50,
                    "speedup": as_float((rec.get("speedup") or {}).get("1")),
                    "cpu": env.get("cpu"),
                    "threads": env.get("threads"),
                }
    return out
