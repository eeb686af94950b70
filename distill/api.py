"""distill from Python: the commands as functions, with plain strings and paths in and checkpoint
or result dicts out.

Each function builds the same settings objects and calls the same library function as its
command (distill/cli/), so a default lives in one place (distill/settings.py, the named
recipes) and a mistake is the same `distill.errors.UserError` with the same one-line message.
Keyword overrides are settings fields by name: `epochs=2, batch_size=64` (the recipe),
`val_size=1000, train_size=4000, cache_dir=...` (the data), `device="cpu", seed=1, force=True`
(the run). Unknown names are a UserError listing the valid ones.

    import distill

    distill.train_teacher("resnet18-quarter", "cifar10", "runs/t.pt", recipe="quick")
    student = distill.train_student("runs/t.pt", "resnet18-quarter", out="runs/s.pt")
    model = distill.load_model("runs/s.pt")  # [0,1] RGB NCHW in, logits out
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn

from distill.budget import DEFAULT_BUDGET, parse_budget
from distill.console import make_console
from distill.errors import UserError
from distill.settings import (
    DataSettings,
    ExportSettings,
    KDSettings,
    PruneSettings,
    Recipe,
    RunSettings,
    build,
    data_for_model,
    to_dict,
)

__all__ = ["evaluate", "export_onnx", "load_model", "prune", "train_student", "train_teacher"]

PathLike = str | os.PathLike

# The fields a keyword override may name, per settings class. Each function's own parameters
# (the data source, the output, quiet, the recipe's name) are not overrides.
RECIPE_FIELDS = tuple(f.name for f in fields(Recipe) if f.name != "name")
DATA_FIELDS = tuple(f.name for f in fields(DataSettings) if f.name != "source")
RUN_FIELDS = tuple(f.name for f in fields(RunSettings) if f.name not in ("out", "quiet"))
# What `distill eval --data ...` takes: the split is the model's, the rest says where data is.
EVAL_DATA_FIELDS = ("val_size", "split_seed", "data_root", "cache_dir")


def load_model(path: PathLike) -> nn.Module:
    """The model in a distill checkpoint (.pt), ready to run: eval mode, normalisation inside.

    It takes what the ONNX export takes, float32 NCHW RGB in [0,1], and returns logits (the
    module is the one `export_onnx` traces). `model.classes` names each output position and
    `model.input_size` is the [C, H, W] it was trained on.
    """
    from distill.checkpoint import load_checkpoint
    from export.wrappers import reference_module

    ckpt = load_checkpoint(path)
    model = reference_module(ckpt)
    model.classes = list(ckpt["classes"])
    model.input_size = list(ckpt["input_size"])
    return model


def train_teacher(
    arch: str,
    data: PathLike,
    out: PathLike | None = None,
    *,
    recipe: str | Recipe = "standard",
    stem: str = "auto",
    quiet: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train `arch` on the labels of `data` (cifar10, cifar100 or a folder); return its
    checkpoint, also written to `out` when given (with `NAME.metrics.csv` beside it).
    `image_size=96` trains at 96x96; `stem`: auto, cifar or imagenet (distill/stems.py).

    A teacher is label-smoothed as its recipe says for teachers (`teacher_label_smoothing`:
    none for `standard`, 0.1 for `quick`) unless `label_smoothing=` says otherwise, as with
    `distill teacher train`.
    """
    from distill.recipes import teacher_recipe
    from distill.supervised import train_on_labels

    given = _split(
        overrides, "train_teacher", recipe=RECIPE_FIELDS, data=DATA_FIELDS, run=RUN_FIELDS
    )
    run = _run(out, quiet, given["run"])
    resolved = teacher_recipe(recipe, **given["recipe"])
    settings = build(DataSettings, {"source": _source(data), **given["data"]})
    return train_on_labels(arch, settings, resolved, run, console=_console(quiet), stem=_stem(stem))


def train_student(
    teacher: PathLike | Sequence[PathLike],
    arch: str,
    data: PathLike | None = None,
    out: PathLike | None = None,
    *,
    budget: str | int = DEFAULT_BUDGET,
    kd: str | Mapping[str, Any] | KDSettings | None = None,
    recipe: str | Recipe = "standard",
    stem: str = "auto",
    quiet: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Distil `arch` from `teacher` (a checkpoint path, or several: the mean of their logits);
    return the student's checkpoint, also written to `out` when given.

    `data` defaults to the teacher's data, split and image size (`image_size=` may differ: the
    teacher sees the batch resized to its own). `budget` (e.g. "5M") is checked before the
    first step. `kd`: "hinton" or "dkd", a mapping of KDSettings fields
    (`{"method": "dkd", "beta": 4}`), or a KDSettings; None: KDSettings' defaults (Hinton).
    """
    from distill.checkpoint import load_checkpoint
    from distill.recipes import make_recipe
    from distill.student import train_student as distil

    given = _split(
        overrides, "train_student", recipe=RECIPE_FIELDS, data=DATA_FIELDS, run=RUN_FIELDS
    )
    paths = _paths(teacher, "teacher")
    run = _run(out, quiet, given["run"])
    first = load_checkpoint(paths[0])  # the split defaults to the teacher's own
    settings = data_for_model(
        first.get("data") or {}, _with_source(given["data"], data), f"teacher {paths[0]}"
    )
    return distil(
        arch,
        paths,
        settings,
        make_recipe(recipe, **given["recipe"]),
        run,
        _kd(kd),
        parse_budget(budget),
        console=_console(quiet),
        stem=_stem(stem),
    )


def prune(
    model: PathLike,
    budget: str | int,
    out: PathLike,
    *,
    teacher: PathLike | Sequence[PathLike] | None = None,
    data: PathLike | None = None,
    kd: str | Mapping[str, Any] | KDSettings | None = None,
    recipe: str | Recipe | None = None,
    quiet: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Prune the checkpoint `model` to `budget` parameters, distilling from `teacher` (default:
    the unpruned model itself) between steps and while it recovers; return the pruned
    checkpoint, written to `out`. `recipe`, the training subsample and the image size default
    to the model's own.

    Overrides: PruneSettings fields (`steps`, `epochs_per_step`, `importance`, `round_to`, and
    `epochs`: the recovery epochs), then recipe, data and run fields, as `distill prune` takes
    them. `kd` as in `train_student`.
    """
    from distill.checkpoint import load_checkpoint
    from distill.pruning import prune_checkpoint
    from distill.recipes import make_recipe, model_recipe
    from distill.settings import PRUNE_CARRIES

    prune_fields = tuple(
        f.name for f in fields(PruneSettings) if f.name not in ("budget", "enabled")
    )
    given = _split(
        overrides,
        "prune",
        prune=prune_fields,
        recipe=tuple(n for n in RECIPE_FIELDS if n != "epochs"),  # `epochs` is the recovery's
        data=DATA_FIELDS,
        run=RUN_FIELDS,
    )
    if out is None:
        raise UserError("prune writes a checkpoint: pass out, e.g. out='runs/p.pt'")
    settings = build(PruneSettings, {"budget": _budget_text(budget), **given["prune"]})
    run = _run(out, quiet, given["run"])
    src = load_checkpoint(model)
    given_data = _with_source(given["data"], data)
    return prune_checkpoint(
        model,
        settings,
        data=data_for_model(src.get("data") or {}, given_data, str(model), PRUNE_CARRIES),
        recipe=make_recipe(recipe or model_recipe(src), **given["recipe"]),
        run=run,
        kd=_kd(kd),
        teacher_paths=_paths(teacher, "teacher") if teacher is not None else [],
        console=_console(quiet),
    )


def export_onnx(
    checkpoint: PathLike,
    out: PathLike | None = None,
    *,
    force: bool = False,
    data: PathLike | None = None,
    data_root: PathLike | None = None,
    cache_dir: PathLike | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Export `checkpoint` to one checked ONNX file (default beside it: s.pt -> s.onnx,
    s.int8.onnx, s.fp16.onnx); return the export's record (path, parity with PyTorch, accuracy,
    metadata).

    Options are ExportSettings fields: `int8=True`, `fp16=True`, `tta=True`, `int8_max_drop=`.
    `data`: where the model's data is, when not where its checkpoint recorded it.
    """
    from export.onnx import export_onnx as export

    given = _split(options, "export_onnx", export=tuple(f.name for f in fields(ExportSettings)))
    settings = build(ExportSettings, given["export"])
    report = export(
        checkpoint,
        out,
        **to_dict(settings),  # ExportSettings' fields are export_onnx's keywords
        force=force,
        data=None if data is None else _source(data),
        data_root=None if data_root is None else Path(data_root),
        cache_dir=None if cache_dir is None else Path(cache_dir),
    )
    return to_dict(report)


def evaluate(
    model_path: PathLike,
    *,
    split: str = "val",
    data: PathLike | None = None,
    device: str = "auto",
    tta: bool = False,
    **data_overrides: Any,
) -> dict[str, Any]:
    """Top-1 (`accuracy`), `top5`, `loss`, `per_class` and `confusion` of a .pt or .onnx model
    on the split it was validated on (`split="test"`: the data's test split).

    `data` and the overrides (`cache_dir`, `data_root`, `val_size`, `split_seed`) say where the
    model's data is when not where it recorded; a split other than the model's is refused.
    """
    from distill.evaluation import evaluate_file

    given = _split(data_overrides, "evaluate", data=EVAL_DATA_FIELDS)
    return evaluate_file(
        model_path,
        data=_with_source(given["data"], data),
        split=split,
        device=device,
        tta=tta,
    )


# ---------------------------------------------------------------------------------------------


def _split(
    overrides: Mapping[str, Any], what: str, **groups: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Keyword overrides by settings group; the first group naming a field takes it."""
    owner: dict[str, str] = {}
    for group, names in groups.items():
        for name in names:
            owner.setdefault(name, group)
    out: dict[str, dict[str, Any]] = {group: {} for group in groups}
    for key, value in overrides.items():
        if key not in owner:
            close = difflib.get_close_matches(key, owner, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(
                f"{what}() has no setting {key!r}; {hint}valid ones: {', '.join(sorted(owner))}"
            )
        out[owner[key]][key] = value
    return out


def _run(out: PathLike | None, quiet: bool, given: Mapping[str, Any]) -> RunSettings:
    from distill.run_log import check_tensorboard

    run = build(RunSettings, {"out": out, "quiet": quiet, **given})
    if run.tensorboard is not None:
        check_tensorboard()  # before any data is decoded or a lock taken
    return run


def _console(quiet: bool):
    # Progress and epoch lines go to stderr: stdout belongs to the caller's program.
    return make_console(quiet, stderr=True)


def _source(data: PathLike) -> str:
    if not isinstance(data, (str, os.PathLike)) or not str(data):
        raise UserError(f"data must be cifar10, cifar100 or a folder, got {data!r}")
    return str(data)


def _with_source(given: Mapping[str, Any], data: PathLike | None) -> dict[str, Any]:
    return dict(given) if data is None else {"source": _source(data), **given}


def _paths(value: PathLike | Sequence[PathLike], what: str) -> list[Path]:
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    if not items:
        raise UserError(f"no {what} given; pass a checkpoint path (or a list of them)")
    return [Path(p) for p in items]


def _kd(kd: str | Mapping[str, Any] | KDSettings | None) -> KDSettings:
    if kd is None or isinstance(kd, KDSettings):
        return kd or KDSettings()
    values = {"method": kd} if isinstance(kd, str) else kd
    return build(KDSettings, values, label=lambda name: f"kd {name}")


def _stem(stem: str) -> str:
    if stem not in ("auto", "cifar", "imagenet"):
        raise UserError(f"stem must be auto, cifar or imagenet, got {stem!r}")
    return stem


def _budget_text(budget: str | int) -> str:
    """PruneSettings keeps the budget as written; parse it now so a mistake names `budget`."""
    parse_budget(budget)
    return str(budget)
