"""What the report knows about each model file: the `Model` and `Collection` records, the roles a
model can play, and lenient number readers for values that come from files written by any
version of distill."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.report.bench_records import BenchRecord

# Display order and names of the roles a model can play; ONNX files sort after their source.
ROLES = {
    "teacher": "teacher",
    "baseline": "baseline student (labels only)",
    "kd": "KD student",
    "pruned": "pruned",
    "onnx": "ONNX export",
}
COLORS = {
    "teacher": "#1f77b4",
    "baseline": "#7f7f7f",
    "kd": "#d62728",
    "pruned": "#2ca02c",
    "onnx": "#9467bd",
}


@dataclass(frozen=True)
class Model:
    """One model file in the folder, with what the report shows about it."""

    path: Path
    role: str  # a key of ROLES; for an ONNX file, its source's role when the source is in DIR
    arch: str
    params: int | None
    macs: int | None
    val_accuracy: float | None  # [0, 1]; for an ONNX file, measured on the file by the exporter
    test_accuracy: float | None
    size_bytes: int
    precision: str = ""  # "" for checkpoints; fp32 | fp16 | int8 for ONNX files
    source: str | None = None  # file name of the checkpoint an ONNX file came from
    # What an ONNX file's val_accuracy was measured on (metadata `val_accuracy_measured_on`)
    accuracy_measured_on: str | None = None
    # Share of val images where the top-1 equals the teacher's (KD students, pruned models)
    teacher_agreement: float | None = None
    latency_ms: float | None = None  # onnxruntime CPU p50 at batch 1, from bench.json
    bench: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # The checkpoint without its weights (provenance: recipe, data, teachers, kd, pruning).
    ckpt: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_onnx(self) -> bool:
        return self.path.suffix == ".onnx"

    @property
    def kind_label(self) -> str:
        if not self.is_onnx:
            return ROLES[self.role]
        tag = f"ONNX {self.precision}"
        return f"{ROLES[self.role]}, {tag}" if self.source else tag


@dataclass(frozen=True)
class Collection:
    """Everything found in a run folder."""

    run_dir: Path
    models: tuple[Model, ...]
    # Files that looked like models but could not be read, exports gone stale: one line each
    problems: tuple[str, ...]
    bench_file: Path | None
    pipeline: dict[str, Any] | None
    bench: tuple[BenchRecord, ...] = ()  # bench.json's records, one per (file, device)
    # (file name, why) of each checkpoint that could not be read, for a caller's own words
    unreadable: tuple[tuple[str, str], ...] = ()


def checkpoint_role(ckpt: dict[str, Any]) -> str:
    """teacher | baseline | kd | pruned, from the checkpoint's content alone."""
    kind = ckpt.get("kind")
    if kind == "teacher":
        return "teacher"
    if kind == "pruned":
        return "pruned"
    return "kd" if ckpt.get("teachers") else "baseline"


def as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def as_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
