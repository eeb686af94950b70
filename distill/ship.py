"""Which file of a run to ship, in one line: the fastest measured ONNX file whose val top-1 is
within half a point of the most accurate one (SPEC 11's rule for the deployment engine), its
latency at batch 1 on this CPU and how much smaller it is than its fp32 export (or, without
one, than the teacher's checkpoint). The pipeline ends with it and the report opens with it."""

from __future__ import annotations

from collections.abc import Sequence

from distill.report.records import Model

WITHIN = 0.005  # val top-1, as a fraction: half a point


def ship_choice(models: Sequence[Model]) -> Model | None:
    files = [m for m in models if m.is_onnx and m.val_accuracy is not None]
    if not files:
        return None
    best = max(m.val_accuracy for m in files)
    close = [m for m in files if m.val_accuracy >= best - WITHIN]
    timed = [m for m in close if m.latency_ms]
    if timed:
        return min(timed, key=lambda m: m.latency_ms)
    return min(close, key=lambda m: m.size_bytes)


def ship_line(models: Sequence[Model]) -> str | None:
    """ "ship runs/demo/student.int8.onnx: 81.2%, 0.25 ms at batch 1 on this CPU, 3.5x smaller
    than its fp32 export", or None when no exported file has an accuracy."""
    m = ship_choice(models)
    if m is None:
        return None
    parts = [f"{m.val_accuracy:.1%} val top-1"]
    if m.latency_ms:
        parts.append(f"{m.latency_ms:.2f} ms at batch 1 on this CPU")
    fp32 = next(
        (o for o in models if o.is_onnx and o.source == m.source and o.precision == "fp32"), None
    )
    teacher = next((o for o in models if o.role == "teacher" and not o.is_onnx), None)
    if fp32 is not None and fp32 is not m:
        parts.append(f"{fp32.size_bytes / m.size_bytes:.1f}x smaller than its fp32 export")
    elif teacher is not None:
        parts.append(f"{teacher.size_bytes / m.size_bytes:.1f}x smaller than the teacher's file")
    return f"ship {m.path}: {', '.join(parts)}"
