"""A student's teachers, read and checked (SPEC 1, 4): the files, the data source against the
teachers' own, then the decoded data against the teachers (classes, input size, normalisation
and the validation split, which must be the teachers' own or its images were in their training
set), and the teachers loaded for distillation. `distill.api.train_student` and pruning's
recovery use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.data import Dataset, DataSettings, load_data
from distill.errors import UserError
from distill.files import file_sha256
from distill.resized import at_size

# Per-channel mean/std in [0,1] units. A teacher trained on another subsample of the same images
# differs by ~0.003 (10k images); a different dataset or a normalisation bug differs by far more.
NORM_TOLERANCE = 0.01
# The split fields a student must share with its teachers (keys of `Dataset.info`).
SPLIT_KEYS = ("source_id", "split_seed", "val_size")
SPLIT_FLAGS = {"split_seed": "--split-seed", "val_size": "--val-size"}


def read_teachers(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Load and validate every teacher checkpoint; the teachers must agree with each other."""
    if not paths:
        raise UserError("no teacher given; pass --teacher t.pt (repeat it for an ensemble)")
    ckpts = [load_checkpoint(p) for p in paths]
    first = ckpts[0]
    for path, ckpt in zip(paths[1:], ckpts[1:], strict=True):
        for key in ("classes",):
            if ckpt[key] != first[key]:
                raise UserError(
                    f"teacher {path} has {key} {_short(ckpt[key])} but {paths[0]} has "
                    f"{_short(first[key])}; an ensemble's teachers must share them"
                )
        for key in SPLIT_KEYS:
            a, b = first.get("data", {}).get(key), ckpt.get("data", {}).get(key)
            if a is not None and b is not None and a != b:
                raise UserError(
                    f"teacher {path} was validated on another split ({key} {b!r}) than "
                    f"{paths[0]} ({a!r}); an ensemble's teachers must share one split"
                )
    return ckpts


def load_teacher_data(paths: Sequence[Path], ckpt: dict[str, Any], data: DataSettings) -> Dataset:
    """The data to distil on. A copy of the teacher's data in another place is the same data
    (the content's digest decides, in `check_model_fits_data`); but data from another place that
    the teacher's split does not even fit is named as other data, not as a split-size error
    whose fix would run into the next refusal."""
    try:
        dataset = load_data(data)
        side = ckpt["input_size"][-1]
        if dataset.input_size[-1] != side:
            # Decoded at another size, the digest differs: the content is compared at the
            # teacher's own size (a second decode, cached like the first).
            theirs = (ckpt.get("data") or {}).get("source_id")
            ours = load_data(replace(data, image_size=side)).info.get("source_id")
            if theirs is not None and ours != theirs:
                raise UserError(
                    f"the data ({data.source}) is not what teacher {paths[0]} was trained on "
                    "(its images, labels or classes differ); it must share the teacher's "
                    "validation split: pass its --data"
                )
        return dataset
    except UserError:
        recorded = ckpt.get("data") or {}
        theirs = str(recorded.get("source") or "")
        if not theirs or _same_place(theirs, data.source):
            raise
    sizes = ", ".join(
        f"{k.split('_')[0]} {recorded[k]:,}"
        for k in ("train_size", "val_size")
        if isinstance(recorded.get(k), int)
    )
    raise UserError(
        f"teacher {paths[0]} was trained on other data: {theirs} ({sizes}, split seed "
        f"{recorded.get('split_seed')}), not {data.source}; distil on the teacher's data "
        f"(--data {theirs}) or train a teacher on yours"
    ) from None


def _same_place(a: str, b: str) -> bool:
    if a.lower() == b.lower():
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_model_fits_data(
    path: Path, ckpt: dict[str, Any], dataset: Dataset, what: str = "teacher", resizes: bool = False
) -> None:
    """Refuse a model (a teacher, a model to prune) whose classes, input size, normalisation or
    validation split differ from the data's: training on it would mix up classes, or validate on
    images the model was trained on. `resizes`: the model sees the batch resized to its own
    size (a teacher), so only the channels must agree."""
    classes = list(dataset.classes)
    fix = f"use the data {what} {path} was trained on"
    if ckpt["model_config"]["num_classes"] != dataset.num_classes:
        raise UserError(
            f"{what} {path} predicts {ckpt['model_config']['num_classes']} classes but the data "
            f"has {dataset.num_classes}; {fix}"
        )
    if list(ckpt["classes"]) != classes:
        raise UserError(
            f"{what} {path} has classes {_short(ckpt['classes'])} but the data has "
            f"{_short(classes)}; {fix}"
        )
    size = list(ckpt["input_size"])
    if (size[:1] if resizes else size) != list(dataset.input_size)[: 1 if resizes else 3]:
        raise UserError(
            f"{what} {path} takes {ckpt['input_size']} inputs but the data is "
            f"{list(dataset.input_size)}; {fix}"
        )
    for stat in ("mean", "std") if size == list(dataset.input_size) else ():
        # (at another size the statistics differ by the resizing; the teacher's input is
        # moved to its own normalisation, distill/resized.py)
        theirs, ours = ckpt[stat], getattr(dataset, stat)
        if max(abs(a - b) for a, b in zip(theirs, ours, strict=True)) > NORM_TOLERANCE:
            raise UserError(
                f"{what} {path} normalises with {stat} {_fmt(theirs)} but the data's is "
                f"{_fmt(ours)}; {fix}"
            )
    recorded = ckpt.get("data", {})
    for key in SPLIT_KEYS:
        a, b = recorded.get(key), dataset.info.get(key)
        if a is None or b is None or a == b:
            continue
        if key == "source_id" and size != list(dataset.input_size):
            continue  # decoded at another size: load_teacher_data compared it at the model's
        if key == "source_id":  # a digest of the decoded images, labels and classes
            raise UserError(
                f"the data ({dataset.info.get('source')}) is not what {what} {path} was "
                f"trained on ({recorded.get('source')}; its images, labels or classes differ); "
                f"it must share the {what}'s validation split: pass its --data"
            )
        raise UserError(
            f"the data's {key} is {b!r} but {what} {path} was validated with {a!r}; it must "
            f"share the {what}'s validation split: fix {SPLIT_FLAGS[key]}"
        )


def teacher_record(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What the student's checkpoint says about one teacher (SPEC 6)."""
    return {
        "path": str(Path(path).resolve()),
        "sha256": file_sha256(path),
        "arch": ckpt["arch"],
        "val_accuracy": ckpt.get("metrics", {}).get("val_accuracy"),
    }


def load_teachers(
    paths: Sequence[Path],
    dataset: Dataset,
    device: torch.device | str,
    *,
    channels_last: bool = False,
    checkpoints: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[nn.Module], list[dict[str, Any]]]:
    """Validated teachers on `device` in eval mode, frozen, and their checkpoint records.

    `checkpoints`: the files already read by `read_teachers` (saves reading them twice).
    """
    modules, records = [], []
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    checkpoints = read_teachers(paths) if checkpoints is None else checkpoints
    for path, ckpt in zip(paths, checkpoints, strict=True):
        check_model_fits_data(path, ckpt, dataset, resizes=True)
        model = model_from_checkpoint(ckpt).to(device, memory_format=memory_format)
        norm = (dataset.mean, dataset.std)
        model = at_size(model, ckpt, dataset.input_size, norm).to(device)
        modules.append(model.eval().requires_grad_(False))
        records.append(teacher_record(path, ckpt))
    return modules, records


def _short(values: Sequence[Any], n: int = 5) -> str:
    values = list(values)
    return str(values[:n])[:-1] + (", ...]" if len(values) > n else "]")


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
