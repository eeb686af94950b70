"""The models table: one row per model file."""

from __future__ import annotations

from collections.abc import Sequence

from distill.budget import format_count
from distill.report.latency import FLAG
from distill.report.records import Model
from distill.report.text import code, fmt, plain, size


def _accuracy(value: float, measured_on: str | None) -> str:
    return f"{value:.2%}" + (f" (measured on {measured_on})" if measured_on else "")


def render_table(models: Sequence[Model]) -> str:
    """The table, then one line per flagged latency; optional columns only when some row has
    a value (no test split: no empty test column)."""
    has_test = any(m.test_accuracy is not None for m in models)
    has_latency = any(m.latency_ms is not None for m in models)
    has_agreement = any(m.teacher_agreement is not None for m in models)
    head = ["model", "kind", "arch", "params", "MACs", "val top-1"]
    head += ["test top-1"] if has_test else []
    head += ["top-1 = teacher's"] if has_agreement else []
    head += ["ORT p50, batch 1 (ms)"] if has_latency else []
    head += ["size on disk"]
    rows = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---", "---"] + ["--:"] * (len(head) - 3)) + "|",
    ]
    for m in models:
        cells = [
            f"{code(m.name)}",
            plain(m.kind_label),
            plain(m.arch),
            fmt(m.params, format_count),
            fmt(m.macs, format_count),
            fmt(m.val_accuracy, lambda v, on=m.accuracy_measured_on: _accuracy(v, on)),
        ]
        cells += [fmt(m.test_accuracy, lambda v: f"{v:.2%}")] if has_test else []
        cells += [fmt(m.teacher_agreement, lambda v: f"{v:.1%}")] if has_agreement else []
        if has_latency:  # a noisy number is flagged, its reason listed under the table
            flag = f" {FLAG}" if m.bench.get("noise") else ""
            cells += [fmt(m.latency_ms, lambda v, flag=flag: f"{v:.2f}{flag}")]
        cells += [size(m.size_bytes)]
        rows.append("| " + " | ".join(cells) + " |")
    noisy = [
        f"- {FLAG} {code(m.name)} ORT p50: {plain(m.bench['noise'])}."
        for m in models
        if m.bench.get("noise")
    ]
    return "\n".join(rows + ([""] + noisy if noisy else []))
