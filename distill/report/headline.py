"""The lines at the top of the report: KD gain over the baseline, budgets, what the accuracy
numbers are measured on."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill.budget import parse_budget
from distill.errors import UserError
from distill.report.records import Collection, Model
from distill.report.text import code, plain, points


def budgets(col: Collection) -> dict[str, int]:
    """Parameter budgets recorded anywhere in the run: label -> count."""
    found: dict[str, int] = {}

    def add(label: str, value: Any) -> None:
        if value in (None, "", 0):
            return
        # A value that is no parameter count (a flag named "*budget*") draws no line.
        with contextlib.suppress(UserError, TypeError, ValueError):
            found[label] = parse_budget(value if isinstance(value, (int, str)) else int(value))

    def walk(d: dict[str, Any], prefix: str) -> None:
        # Any key naming a budget, at any depth of the resolved config: {"budget": "5M"},
        # {"prune_budget": ...} or {"prune": {"budget": ...}} all count.
        for k, v in d.items():
            label = f"{prefix} {k}".strip().replace("_", " ")
            if isinstance(v, dict):
                walk(v, label)
            elif "budget" in k.lower():
                add(label, v)

    walk((col.pipeline or {}).get("config") or {}, "")
    for m in col.models:
        if m.role == "pruned" and not m.is_onnx:
            add("prune budget", (m.ckpt.get("pruning") or {}).get("budget"))
    # One line per distinct value: the same budget under two names is drawn once.
    distinct: dict[str, int] = {}
    for label, value in found.items():
        if value not in distinct.values():
            distinct[label] = value
    return distinct


def kd_pairs(models: Sequence[Model]) -> list[tuple[Model, Model | None]]:
    """Each KD student checkpoint with the label-only baseline of the same arch (None: none)."""
    ckpts = [m for m in models if not m.is_onnx and m.val_accuracy is not None]
    baselines = [m for m in ckpts if m.role == "baseline"]
    return [
        (kd, next((b for b in baselines if b.arch == kd.arch), None))
        for kd in ckpts
        if kd.role == "kd"
    ]


def kd_gain_lines(models: Sequence[Model]) -> list[str]:
    """One line per KD student checkpoint, against the label-only baseline of the same arch."""
    pairs = kd_pairs(models)
    lines = []
    for kd, base in pairs:
        if base is None:
            lines.append(
                f"KD student {code(kd.name)}: no label-only baseline of {plain(kd.arch)} in this "
                "folder, so the gain from distillation is not measured."
            )
            continue
        gain = round(100 * (kd.val_accuracy - base.val_accuracy), 1)
        acc = f"({kd.val_accuracy:.1%} vs {base.val_accuracy:.1%} val top-1)"
        who = "KD student" if len(pairs) == 1 else f"KD student {code(kd.name)}"
        if gain > 0:
            line = f"{who}: **+{gain:.1f} points** over the label-only baseline {acc}"
        elif gain < 0:
            line = (
                f"{who}: **{gain:.1f} points**, negative: distillation did worse than the "
                f"label-only baseline {acc}"
            )
        else:
            line = f"{who}: **+0.0 points**, no gain over the label-only baseline {acc}"
        if kd.test_accuracy is not None and base.test_accuracy is not None:
            line += (
                f"; test: {points(kd.test_accuracy, base.test_accuracy)} points "
                f"({kd.test_accuracy:.1%} vs {base.test_accuracy:.1%})"
            )
        lines.append(line + ".")
    return lines


def _is_jpeg_source(source: str) -> bool:
    if "jpeg" in source.lower() or "jpg" in source.lower():
        return True
    root = Path(source).expanduser()
    if not root.is_dir():
        return False
    # Image-folder layout: train/<class>/* or <class>/*; one file is enough to tell.
    for pattern in ("train/*/*", "*/*"):
        for f in root.glob(pattern):
            return f.suffix.lower() in (".jpg", ".jpeg")
    return False


def data_note(models: Sequence[Model]) -> str:
    infos = [m.ckpt.get("data") or {} for m in models if not m.is_onnx]
    sources = sorted({str(d.get("source")) for d in infos if d.get("source")})
    has_test = any(m.test_accuracy is not None for m in models)
    info = next((d for d in infos if d.get("source")), {})
    split = ""
    if info.get("val_size"):
        split = f" ({int(info['val_size']):,} images, seed {info.get('split_seed', '?')})"
    note = (
        f"Val accuracy is top-1 on a validation split{split} held out of the training images, "
        "the split used for model selection"
    )
    if sources and all(_is_jpeg_source(s) for s in sources):
        note += (
            "; the images are JPEG-decoded (as in the bundled CIFAR-10 copy), not the original "
            "lossless pixels, so expect numbers a little below published ones"
        )
    note += "." if has_test else "; the data has no test split, so no test accuracy is reported."
    if has_test:
        note += " Test accuracy is on the data's own test split, never used for selection."
    if len(sources) > 1:
        note += f" **Models in this folder were trained on different data:** {', '.join(sources)}."
    return note
