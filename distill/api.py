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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from torch import nn

from distill.budget import DEFAULT_BUDGET, parse_budget
from distill.console import make_console
from distill.data import Dataset
from distill.errors import UserError
from distill.settings import (
    BenchSettings,
    DataSettings,
    ExportSettings,
    KDSettings,
    PruneSettings,
    Recipe,
    RunSettings,
    build,
    data_for_model,
)

if TYPE_CHECKING:
    from export.onnx import ExportReport

__all__ = [
    "bench",
    "evaluate",
    "export_onnx",
    "import_teacher",
    "load_model",
    "prune",
    "train_student",
    "train_teacher",
]

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
    data: PathLike | DataSettings | Dataset,
    out: PathLike | None = None,
    *,
    recipe: str | Recipe = "standard",
    run: RunSettings | None = None,
    kind: str = "teacher",
    stem: str = "auto",
    quiet: bool = True,
    console: Console | None = None,
    provenance: Mapping[str, Any] | None = None,
    stop_after_steps: int | None = None,
    on_epoch: Callable[[dict[str, Any]], bool] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train `arch` on the labels of `data` (cifar10, cifar100, a folder, or settings); return
    its checkpoint, also written to `out` when given (with `NAME.metrics.csv` beside it).
    `image_size=96` trains at 96x96; `stem`: auto, cifar or imagenet (distill/stems.py).

    `recipe` by name is resolved here, with the overrides: a teacher (`kind="teacher"`) is
    label-smoothed as its recipe says for teachers (`teacher_label_smoothing`: none for
    `standard`, 0.1 for `quick`) unless `label_smoothing=` says otherwise; `kind="student"` is
    a label-only baseline on the recipe as it is. A `Recipe` is taken as it is. `run`: the run
    settings whole (the CLI's and the pipeline's), else built from `out`, `quiet` and overrides.
    `provenance`: the pipeline stage that asked (recorded in the checkpoint);
    `stop_after_steps` simulates a Ctrl-C after that many steps (tests of resume).
    `on_epoch(record)` runs after each epoch's validation (a study's pruner); True ends
    training there, keeping the best weights so far.
    """
    from distill.data import load_data
    from distill.device import seed_everything
    from distill.recipes import make_recipe, teacher_recipe
    from distill.registry import create_model, get_entry
    from distill.run_guard import training_run
    from distill.stems import choose_stem
    from distill.train import fit

    given = _split(
        overrides, "train_teacher", recipe=RECIPE_FIELDS, data=DATA_FIELDS, run=RUN_FIELDS
    )
    run = _run(out, quiet, given["run"], run)
    resolve = teacher_recipe if kind == "teacher" and isinstance(recipe, str) else make_recipe
    resolved = resolve(recipe, **given["recipe"])
    settings = _data(data, given["data"])
    with training_run(run, lambda: get_entry(arch)):
        dataset = settings if isinstance(settings, Dataset) else load_data(settings)
        seed_everything(run.seed)
        return fit(
            create_model(
                arch, dataset.num_classes, choose_stem(_stem(stem), dataset.input_size[1])
            ),
            dataset,
            resolved,
            run,
            kind=kind,
            arch=arch,
            meta={"pipeline": dict(provenance)} if provenance else None,
            console=console or _console(run.quiet),
            stop_after_steps=stop_after_steps,
            on_epoch=on_epoch,
        )


def check_launch(
    arch: str | None,
    recipe: str | Recipe | None,
    run: RunSettings,
    processes: int,
    *,
    kind: str = "teacher",
    **overrides: Any,
) -> None:
    """What every rank of a `processes`-process run would refuse in its first second (the
    output, the architecture, the recipe on this device), checked before any process starts.
    `arch` or `recipe` None: decided later (an imported model's; a pruned model's own)."""
    from distill.device import resolve_device
    from distill.recipes import make_recipe, teacher_recipe
    from distill.registry import get_entry
    from distill.run_guard import check_run_output
    from distill.train_setup import check_processes

    check_run_output(run)
    if arch is not None:
        get_entry(arch)
    if recipe is not None:
        resolve = teacher_recipe if kind == "teacher" and isinstance(recipe, str) else make_recipe
        resolved = resolve(recipe, **overrides)
        check_processes(resolved, run, processes, resolve_device(run.device).type == "cuda")


def import_teacher(
    spec: str,
    weights: PathLike,
    data: PathLike | DataSettings | Dataset,
    out: PathLike | None = None,
    *,
    recipe: str | Recipe = "finetune",
    run: RunSettings | None = None,
    quiet: bool = True,
    console: Console | None = None,
    stop_after_steps: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A pretrained `torchvision:NAME` or `timm:NAME` with the user's state dict (`weights`; nothing
    is downloaded), its classifier replaced for `data`'s classes and fine-tuned on them (the
    `finetune` recipe by default); return the teacher checkpoint, also written to `out`.
    Overrides and `run` as in `train_teacher`."""
    from distill.importing import import_teacher as fine_tune
    from distill.recipes import teacher_recipe

    given = _split(
        overrides, "import_teacher", recipe=RECIPE_FIELDS, data=DATA_FIELDS, run=RUN_FIELDS
    )
    run = _run(out, quiet, given["run"], run)
    resolved = teacher_recipe(recipe, **given["recipe"]) if isinstance(recipe, str) else recipe
    return fine_tune(
        spec,
        weights,
        _data(data, given["data"]),
        resolved,
        run,
        console=console or _console(run.quiet),
        stop_after_steps=stop_after_steps,
    )


def train_student(
    teacher: PathLike | Sequence[PathLike],
    arch: str,
    data: PathLike | DataSettings | Dataset | None = None,
    out: PathLike | None = None,
    *,
    budget: str | int = DEFAULT_BUDGET,
    kd: str | Mapping[str, Any] | KDSettings | None = None,
    recipe: str | Recipe = "standard",
    run: RunSettings | None = None,
    stem: str = "auto",
    quiet: bool = True,
    console: Console | None = None,
    provenance: Mapping[str, Any] | None = None,
    stop_after_steps: int | None = None,
    on_epoch: Callable[[dict[str, Any]], bool] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Distil `arch` from `teacher` (a checkpoint path, or several: the mean of their logits);
    return the student's checkpoint, also written to `out` when given.

    `data` defaults to the teacher's data, split and image size (`image_size=` may differ: the
    teacher sees the batch resized to its own); overrides of data fields apply to it.
    `budget` (e.g. "5M") is checked before the first step. `kd`: "hinton" or "dkd", a mapping of
    KDSettings fields (`{"method": "dkd", "beta": 4}`), or a KDSettings; None: KDSettings'
    defaults (Hinton). `recipe`, `run`, `provenance`, `stop_after_steps`, `on_epoch` as in
    `train_teacher`.
    """
    from distill.student import train_student as distil

    given = _split(
        overrides, "train_student", recipe=RECIPE_FIELDS, data=DATA_FIELDS, run=RUN_FIELDS
    )
    paths = _paths(teacher, "teacher")
    run = _run(out, quiet, given["run"], run)
    return distil(
        arch,
        paths,
        _model_data(paths[0], f"teacher {paths[0]}", data, given["data"]),
        _recipe(recipe, given["recipe"]),
        run,
        _kd(kd),
        parse_budget(budget),
        console=console or _console(run.quiet),
        stop_after_steps=stop_after_steps,
        provenance=dict(provenance) if provenance else None,
        on_epoch=on_epoch,
        stem=_stem(stem),
    )


def prune(
    model: PathLike,
    budget: str | int | PruneSettings,
    out: PathLike | None = None,
    *,
    teacher: PathLike | Sequence[PathLike] | None = None,
    data: PathLike | DataSettings | Dataset | None = None,
    kd: str | Mapping[str, Any] | KDSettings | None = None,
    recipe: str | Recipe | None = None,
    run: RunSettings | None = None,
    quiet: bool = True,
    console: Console | None = None,
    provenance: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Prune the checkpoint `model` to `budget` parameters, distilling from `teacher` (default:
    the unpruned model itself) between steps and while it recovers; return the pruned
    checkpoint, written to `out`. `recipe`, the training subsample and the image size default
    to the model's own.

    `budget`: "2.5M", or PruneSettings whole. Overrides: PruneSettings fields (`steps`,
    `epochs_per_step`, `importance`, `round_to`, and `epochs`: the recovery epochs), then
    recipe, data and run fields, as `distill prune` takes them. `kd` as in `train_student`.
    """
    from distill.checkpoint import load_checkpoint
    from distill.pruning import prune_checkpoint
    from distill.recipes import model_recipe
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
    if isinstance(budget, PruneSettings):
        settings = replace(budget, **given["prune"]) if given["prune"] else budget
    else:
        settings = build(PruneSettings, {"budget": _budget_text(budget), **given["prune"]})
    if not settings.budget:
        raise UserError("no budget given; pass the pruned model's budget, e.g. --budget 2.5M")
    run = _run(out, quiet, given["run"], run)
    if run.out is None:
        raise UserError("prune writes a checkpoint: pass out, e.g. out='runs/p.pt'")
    src = load_checkpoint(model)
    return prune_checkpoint(
        model,
        settings,
        data=_model_data(Path(model), str(model), data, given["data"], PRUNE_CARRIES),
        recipe=_recipe(recipe or model_recipe(src), given["recipe"]),
        run=run,
        kd=_kd(kd),
        teacher_paths=_paths(teacher, "teacher") if teacher else [],
        console=console or _console(run.quiet),
        provenance=dict(provenance) if provenance else None,
    )


def export_onnx(
    checkpoint: PathLike,
    out: PathLike | None = None,
    settings: ExportSettings | None = None,
    *,
    force: bool = False,
    data: PathLike | None = None,
    data_root: PathLike | None = None,
    cache_dir: PathLike | None = None,
    reduce_range: bool | None = None,
    stage: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> ExportReport:
    """Export `checkpoint` to one checked ONNX file (default beside it: s.pt -> s.onnx,
    s.int8.onnx, s.fp16.onnx); return the export's report (path, parity with PyTorch, accuracy,
    metadata; `to_dict(report)` for plain values).

    `settings` whole, or its fields as options: `int8=True`, `fp16=True`, `tta=True`,
    `int8_max_drop=`. `data`: where the model's data is, when not where its checkpoint
    recorded it. `reduce_range`: the int8 weight range (None: decided for this CPU).
    `stage`/`progress`: callbacks for what is being done and how far.
    """
    from export.onnx import export_onnx as export

    given = _split(options, "export_onnx", export=tuple(f.name for f in fields(ExportSettings)))
    # Options on top of settings given whole are type-checked like the rest (not `replace`d).
    settings = build(ExportSettings, given["export"], base=settings)
    return export(
        checkpoint,
        out,
        settings,
        force=force,
        data=None if data is None else _source(data),
        data_root=None if data_root is None else Path(data_root),
        cache_dir=None if cache_dir is None else Path(cache_dir),
        reduce_range=reduce_range,
        stage=stage,
        progress=progress,
    )


def bench(
    model: PathLike,
    settings: BenchSettings | None = None,
    *,
    checkpoint: PathLike | None = None,
    int8: PathLike | None = None,
    data: PathLike | None = None,
    data_root: PathLike | None = None,
    cache_dir: PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Latency, images/s, accuracy and GFLOP/s of every engine and precision for an .onnx (or
    a .pt), measured in one run in alternating blocks; return the record.

    `settings` whole, or BenchSettings fields as options (`batch_sizes=(1, 32)`, `device=`,
    `threads=`, `engines=`, `accuracy=`, `seconds=`).
    """
    from export.benchmark import benchmark
    from export.timing import Timing

    given = _split(options, "bench", bench=tuple(f.name for f in fields(BenchSettings)))
    settings = build(BenchSettings, given["bench"], base=settings)
    return benchmark(
        Path(model),
        settings.batch_sizes,
        settings.device,
        settings.threads,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        engines=list(settings.engines) or None,
        int8=None if int8 is None else Path(int8),
        accuracy=settings.accuracy,
        data=None if data is None else _source(data),
        data_root=None if data_root is None else Path(data_root),
        cache_dir=None if cache_dir is None else Path(cache_dir),
        timing=Timing(min_seconds=settings.seconds),
        progress=progress,
    )


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
    on the split it was validated on (`split="test"`: the data's test split), and the
    `input_size` its images were decoded at (the model's own).

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


def _run(
    out: PathLike | None,
    quiet: bool,
    given: Mapping[str, Any],
    run: RunSettings | None = None,
) -> RunSettings:
    from distill.progress import check_tensorboard

    if run is None:
        run = build(RunSettings, {"out": out, "quiet": quiet, **given})
    elif given or out is not None:
        run = replace(run, **given, **({"out": Path(out)} if out is not None else {}))
    if run.tensorboard is not None:
        check_tensorboard()  # before any data is decoded or a lock taken
    return run


def _console(quiet: bool) -> Console:
    # Progress and epoch lines go to stderr: stdout belongs to the caller's program.
    return make_console(quiet, stderr=True)


def _source(data: PathLike) -> str:
    if not isinstance(data, (str, os.PathLike)) or not str(data):
        raise UserError(f"data must be cifar10, cifar100 or a folder, got {data!r}")
    return str(data)


def _data(data: Any, given: Mapping[str, Any]) -> DataSettings | Dataset:
    """Data settings from a source (and overrides), or the settings or dataset given whole."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, DataSettings):
        return replace(data, **given) if given else data
    return build(DataSettings, {"source": _source(data), **given})


def _model_data(
    path: Path, what: str, data: Any, given: Mapping[str, Any], carries: Any = None
) -> DataSettings | Dataset:
    """A model's own data and split (a teacher's, a model to prune) unless told otherwise:
    a student validates on its teacher's validation split, never on its training images."""
    if isinstance(data, (DataSettings, Dataset)):
        return _data(data, given)
    from distill.checkpoint import load_checkpoint

    recorded = load_checkpoint(path).get("data") or {}
    if carries is None:
        return data_for_model(recorded, _with_source(given, data), what)
    return data_for_model(recorded, _with_source(given, data), what, carries)


def _recipe(recipe: str | Recipe, given: Mapping[str, Any]) -> Recipe:
    from distill.recipes import make_recipe

    return make_recipe(recipe, **given) if given or isinstance(recipe, str) else recipe


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
