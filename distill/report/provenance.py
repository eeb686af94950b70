"""Provenance: the data, the pipeline's stages, each model's recipe, its teachers, versions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill.progress import plural
from distill.report.collect import sha256_index
from distill.report.figures import short_count
from distill.report.records import ROLES, Collection, Model, as_float, as_int
from distill.report.text import code, duration, fmt, plain

RECIPE_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "nesterov",
    "schedule",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "ema_decay",
    "lookahead_k",
    "grad_clip",
)


# KDConfig fields that only DKD reads (losses.py): beta weighs DKD's non-target term, and Hinton
# KD has no such term, so listing it would suggest a setting that did nothing.
DKD_ONLY = ("beta",)


def kd_settings(kd: dict[str, Any]) -> dict[str, Any]:
    """The KD record without settings its method ignores."""
    if kd.get("method") == "dkd":
        return dict(kd)
    return {k: v for k, v in kd.items() if k not in DKD_ONLY}


def _recipe_summary(recipe: dict[str, Any]) -> str:
    parts = []
    for key in RECIPE_KEYS:
        value = recipe.get(key)
        if value in (None, 0, 0.0, False) and key not in ("epochs", "lr"):
            continue  # defaults that mean "off" say nothing
        parts.append(f"{key} {value}")
    aug = recipe.get("augment")
    if isinstance(aug, dict):
        on = [
            f"{k}={v}" if v is not True else k for k, v in aug.items() if v not in (0, None, False)
        ]
        if on:
            parts.append("augment " + " ".join(on))
    return ", ".join(parts)


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if not isinstance(v, (dict, list)))


def _stages(pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    stages = pipeline.get("stages") or []
    if isinstance(stages, dict):  # {name: record} as well as [record, ...]
        stages = [{"name": k, **v} for k, v in stages.items() if isinstance(v, dict)]
    return [s for s in stages if isinstance(s, dict)]


def _data_line(ckpts: Sequence[Model]) -> list[str]:
    info = next((m.ckpt.get("data") for m in ckpts if m.ckpt.get("data")), None)
    if not info:
        return []
    sizes = [
        f"{split} {int(info[f'{split}_size']):,}"
        for split in ("train", "val", "test")
        if as_int(info.get(f"{split}_size"))
    ]
    if "test_size" in info and not as_int(info["test_size"]):
        sizes.append("no test split")
    return [
        f"**Data**: {code(info.get('source', '?'))}; split seed {info.get('split_seed', '?')}"
        + (f"; images: {', '.join(sizes)}" if sizes else "")
        + ".",
        "",
    ]


def _stage_table(pipeline: dict[str, Any] | None) -> list[str]:
    stages = _stages(pipeline) if pipeline else []
    if not stages:
        return []
    out = [
        "**Stages** (from `pipeline.json`):",
        "",
        "| stage | status | wall time | outputs |",
        "|---|---|--:|---|",
    ]
    total = 0.0
    for s in stages:
        outputs = s.get("outputs") or []
        outputs = outputs if isinstance(outputs, list) else [outputs]
        names = ", ".join(f"{code(Path(str(o)).name)}" for o in outputs)
        # The pipeline's report stage is "running" while it writes this very page: it is this
        # report, and its time is not known yet (a seconds field would be a previous run's).
        this = s.get("name") == "report" and s.get("status") == "running"
        status = "this report" if this else s.get("status", "?")
        seconds = None if this else s.get("seconds")
        total += as_float(seconds) or 0
        out.append(f"| {plain(s.get('name', '?'))} | {status} | {duration(seconds)} | {names} |")
    return [*out, f"| **total** | | **{duration(total)}** | |", ""]


def _recipe_line(m: Model) -> str:
    recipe = m.ckpt.get("recipe") or {}
    metrics = m.ckpt.get("metrics") or {}
    line = f"- {code(m.name)}, {ROLES[m.role]}: recipe **{plain(recipe.get('name', '?'))}**"
    summary = _recipe_summary(recipe)
    line += f": {summary}" if summary else ""
    ran = [
        f"{plural(metrics['epochs_run'], 'epoch')} run" if "epochs_run" in metrics else "",
        f"best epoch {metrics['best_epoch']}" if "best_epoch" in metrics else "",
        f"{duration(metrics['train_seconds'])} on {metrics.get('device', '?')}"
        if "train_seconds" in metrics
        else "",
    ]
    ran = [r for r in ran if r]
    line += f" ({'; '.join(ran)})" if ran else ""
    if isinstance(m.ckpt.get("kd"), dict):
        line += f". KD: {_kv(kd_settings(m.ckpt['kd']))}"
    pruning = m.ckpt.get("pruning")
    if isinstance(pruning, dict):
        # before/after numbers are in the headline; here only how it was pruned
        how = {
            k: v
            for k, v in pruning.items()
            if not k.startswith(("params_", "macs_", "val_accuracy_"))
        }
        if as_int(how.get("budget")):
            how["budget"] = short_count(int(how["budget"]))
        line += f". Pruning: {_kv(how)}" if how else ""
    return line


def provenance(col: Collection) -> list[str]:
    ckpts = [m for m in col.models if not m.is_onnx]
    out = ["## Provenance", "", *_data_line(ckpts), *_stage_table(col.pipeline)]
    out += ["**Recipes**:", "", *[_recipe_line(m) for m in ckpts], ""]
    teacher_lines = _teacher_lines(col)
    if teacher_lines:
        out += [
            "**Teachers of each KD student** (sha256 checked against files here):",
            "",
            *teacher_lines,
            "",
        ]
    versions = _versions(ckpts)
    if versions:
        out += ["**Versions**: " + versions, ""]
    if col.pipeline and col.pipeline.get("config"):
        out += [
            "<details><summary>Resolved pipeline config</summary>",
            "",
            "```json",
            json.dumps(col.pipeline["config"], indent=2, default=str),
            "```",
            "",
            "</details>",
            "",
        ]
    return out


def _teacher_lines(col: Collection) -> list[str]:
    kds = [m for m in col.models if not m.is_onnx and m.ckpt.get("teachers")]
    if not kds:
        return []
    here = sha256_index([m for m in col.models if not m.is_onnx and m.role == "teacher"])
    lines = []
    for m in kds:
        for t in m.ckpt["teachers"]:
            match = here.get(str(t.get("sha256")))
            where = f"= {code(match.name)} here" if match else "file not in this folder"
            acc = as_float(t.get("val_accuracy"))
            lines.append(
                f"- {code(m.name)} ← {plain(t.get('arch', '?'))} "
                f"{code(Path(str(t.get('path', '?'))).name)} "
                f"({fmt(acc, lambda v: f'{v:.1%} val')}; {where})"
            )
    return lines


def _versions(ckpts: Sequence[Model]) -> str:
    seen: dict[str, set[str]] = {}
    for m in ckpts:
        for k, v in (m.ckpt.get("versions") or {}).items():
            seen.setdefault(k, set()).add(str(v))
    return ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in seen.items())
