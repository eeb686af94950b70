"""What pruning did to each pruned checkpoint, from its `pruning` record."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distill.budget import format_count
from distill.report.models import Model, as_float, as_int
from distill.report.text import points


def pruning_lines(models: Sequence[Model]) -> list[str]:
    """Per pruned checkpoint: size, MACs and accuracy before -> after, from its pruning record."""
    lines = []
    for m in models:
        rec = m.ckpt.get("pruning") if not m.is_onnx else None
        if m.role != "pruned" or not isinstance(rec, dict):
            continue
        parts = []
        for what, unit in (("params", "params"), ("macs", "MACs")):
            before, after = as_int(rec.get(f"{what}_before")), as_int(rec.get(f"{what}_after"))
            if before and after:
                parts.append(
                    f"{format_count(before)} → {format_count(after)} {unit} "
                    f"({after / before - 1:+.0%})"
                )
        a0 = as_float(rec.get("val_accuracy_before"))
        a1 = as_float(rec.get("val_accuracy_after"))
        if a1 is None:
            a1 = m.val_accuracy
        if a0 is not None and a1 is not None:
            acc = f"{a0:.1%} → {a1:.1%} val top-1 ({points(a1, a0)} points"
            cut = as_float(rec.get("val_accuracy_pruned"))
            # What KD fine-tuning won back: accuracy right after the last cut vs at the end.
            acc += f"; {cut:.1%} right after pruning, before recovery)" if cut is not None else ")"
            parts.append(acc)
        src = rec.get("source")
        origin = f" from `{Path(str(src['path'])).name}`" if isinstance(src, dict) else ""
        if parts:
            lines.append(f"Pruned `{m.name}`{origin}: " + ", ".join(parts) + ".")
    return lines
