"""Train a student on its teacher's (or an ensemble's mean) soft targets (SPEC 1, 4).

Everything a user can get wrong is checked before any file is written, cheapest first: the
architecture name and output path, the teacher files, the parameter budget (before the data is
even decoded), then the data against the teachers (classes, input size, normalisation and the
validation split, which must be the teachers' own or its images were in their training set).
Training itself is `distill.train.fit` with a `DistillationObjective`, so recipes, progress,
resume and checkpoints behave exactly as for teachers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from distill.budget import check_budget
from distill.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from distill.data import DataConfig, Dataset, load_data
from distill.errors import UserError
from distill.losses import DistillationObjective, KDConfig
from distill.recipes import Recipe
from distill.registry import create_model
from distill.teacher import check_run_inputs
from distill.train import RunConfig, fit, last_path, resolve_device, seed_everything

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
        for key in ("classes", "input_size"):
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


def resolve_split(
    teachers: Sequence[dict[str, Any]], val_size: int | None, split_seed: int | None
) -> tuple[int, int]:
    """The student's (val size, split seed): the teachers' own, which explicit values must match.

    Another split would put some of the student's validation images in the teachers' training
    set, and its validation accuracy would be inflated by the teachers' memory of them.
    """
    recorded = teachers[0].get("data", {})
    resolved = []
    for flag, given, key, fallback in (
        ("--val-size", val_size, "val_size", 5000),
        ("--split-seed", split_seed, "split_seed", 0),
    ):
        theirs = recorded.get(key)
        if given is not None and theirs is not None and given != theirs:
            raise UserError(
                f"{flag} {given} differs from the teacher's {theirs}, so the student's "
                f"validation images would overlap the teacher's training set; drop {flag}"
            )
        resolved.append(given if given is not None else fallback if theirs is None else theirs)
    return resolved[0], resolved[1]


def check_teacher_fits_data(path: Path, ckpt: dict[str, Any], dataset: Dataset) -> None:
    """Refuse a teacher whose classes, input size, normalisation or split differ from the data's."""
    classes = list(dataset.classes)
    if ckpt["model_config"]["num_classes"] != dataset.num_classes:
        raise UserError(
            f"teacher {path} predicts {ckpt['model_config']['num_classes']} classes but the data "
            f"has {dataset.num_classes}; distil on the data the teacher was trained on"
        )
    if list(ckpt["classes"]) != classes:
        raise UserError(
            f"teacher {path} has classes {_short(ckpt['classes'])} but the data has "
            f"{_short(classes)}; distil on the data the teacher was trained on"
        )
    if list(ckpt["input_size"]) != list(dataset.input_size):
        raise UserError(
            f"teacher {path} takes {ckpt['input_size']} inputs but the data is "
            f"{list(dataset.input_size)}; distil on images of the teacher's size"
        )
    for what in ("mean", "std"):
        theirs, ours = ckpt[what], getattr(dataset, what)
        if max(abs(a - b) for a, b in zip(theirs, ours, strict=True)) > NORM_TOLERANCE:
            raise UserError(
                f"teacher {path} normalises with {what} {_fmt(theirs)} but the data's is "
                f"{_fmt(ours)}; distil on the data the teacher was trained on"
            )
    recorded = ckpt.get("data", {})
    for key in SPLIT_KEYS:
        a, b = recorded.get(key), dataset.info.get(key)
        if a is None or b is None or a == b:
            continue
        if key == "source_id":  # a digest of the source's path and content
            raise UserError(
                f"the data ({dataset.info.get('source')}) is not what teacher {path} was "
                f"trained on ({recorded.get('source')}; another folder, or its files changed "
                "since); the student must share the teacher's validation split: pass its --data"
            )
        raise UserError(
            f"the data's {key} is {b!r} but teacher {path} was validated with {a!r}; the "
            f"student must share the teacher's validation split: fix {SPLIT_FLAGS[key]}"
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
        check_teacher_fits_data(path, ckpt, dataset)
        model = model_from_checkpoint(ckpt).to(device, memory_format=memory_format)
        modules.append(model.eval().requires_grad_(False))
        records.append(teacher_record(path, ckpt))
    return modules, records


def _check_resume_matches(out: Path, records: list[dict[str, Any]], kd: KDConfig) -> None:
    """`fit` checks the recipe, data and seed of a resumed run; the teachers and KD are ours."""
    state_file = last_path(out)
    if not state_file.exists():
        return  # fit says there is nothing to resume
    saved = load_checkpoint(state_file)
    saved_teachers = [t.get("sha256") for t in saved.get("teachers", [])]
    if saved_teachers != [r["sha256"] for r in records]:
        raise UserError(
            f"cannot resume: {state_file} was distilled from other teacher files; pass the same "
            "--teacher files, or drop --resume and pass --force to start over"
        )
    if saved.get("kd") != kd.to_dict():
        raise UserError(
            f"cannot resume: {state_file} used other KD settings ({saved.get('kd')}); pass the "
            "same --kd/--alpha/--temperature/--beta/--warmup, or --force to start over"
        )


def train_student(
    arch: str,
    teacher_paths: Sequence[Path],
    data: DataConfig | Dataset,
    recipe: Recipe,
    run: RunConfig,
    kd: KDConfig,
    budget: int,
    *,
    console: Console | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Distil `arch` from the teacher(s) and return its checkpoint (also written to `run.out`)."""
    check_run_inputs(arch, run)
    teacher_paths = [Path(p) for p in teacher_paths]
    ckpts = read_teachers(teacher_paths)
    # The budget needs only the class count, which the teachers already tell: check it before
    # decoding any data (that writes a cache). A meta-device model costs no memory.
    with torch.device("meta"):
        check_budget(create_model(arch, len(ckpts[0]["classes"])), budget, f"--arch {arch}")
    if isinstance(data, DataConfig):
        resolve_split(ckpts, data.val_size, data.seed)  # refuses another split before decoding
        dataset = load_data(data)
    else:
        dataset = data
    device = resolve_device(run.device)
    teachers, records = load_teachers(
        teacher_paths, dataset, device, channels_last=recipe.channels_last, checkpoints=ckpts
    )
    del ckpts  # the teachers' weights now live in their modules; don't hold a second copy
    if run.resume and run.out is not None:
        _check_resume_matches(run.out, records, kd)
    if console is not None and run.show_progress:
        for r in records:
            acc = r["val_accuracy"]
            acc_text = f"{acc:.2%}" if isinstance(acc, float) and math.isfinite(acc) else "n/a"
            console.print(f"teacher {r['path']}: {r['arch']}, val top-1 {acc_text}")
    seed_everything(run.seed)
    model = create_model(arch, dataset.num_classes)
    objective = DistillationObjective(tuple(teachers), kd, recipe.label_smoothing, recipe.amp)
    return fit(
        model,
        dataset,
        recipe,
        run,
        objective=objective,
        meta={"teachers": records, "kd": kd.to_dict()},
        console=console,
        stop_after_steps=stop_after_steps,
    )


def _short(values: Sequence[Any], n: int = 5) -> str:
    values = list(values)
    return str(values[:n])[:-1] + (", ...]" if len(values) > n else "]")


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
