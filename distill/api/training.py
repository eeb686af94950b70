"""Training from Python: a teacher from labels, an imported pretrained teacher, a student
distilled from teachers; and the checks a multi-process run makes before it starts.

Each resolves its settings once (the recipe by name with the overrides, the data, the run) and
calls `distill.train.fit`: the CLI commands, the pipeline's stages and the sweep's trials all
arrive here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from rich.console import Console

from distill.api.args import (
    DATA_FIELDS,
    RECIPE_FIELDS,
    RUN_FIELDS,
    PathLike,
    data_settings,
    kd_settings,
    model_data,
    paths,
    progress_console,
    recipe_of,
    run_settings,
    split_overrides,
    stem_name,
)
from distill.budget import DEFAULT_BUDGET, check_budget, parse_budget
from distill.data import Dataset, load_data
from distill.device import resolve_device, seed_everything
from distill.kd.objective import make_objective
from distill.memory import check_training_step
from distill.recipes import make_recipe, teacher_recipe
from distill.registry import create_model, get_entry
from distill.run_guard import training_run
from distill.settings import (
    DataSettings,
    KDSettings,
    Recipe,
    RunSettings,
    kd_notes,
    kd_record,
    resolve_kd,
)
from distill.stems import choose_stem
from distill.teacher_checks import load_teacher_data, load_teachers, read_teachers
from distill.timing import phase
from distill.train import fit


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

    given = split_overrides(
        overrides, "train_teacher", recipe=RECIPE_FIELDS, data=DATA_FIELDS, run=RUN_FIELDS
    )
    run = run_settings(out, quiet, given["run"], run)
    resolve = teacher_recipe if kind == "teacher" and isinstance(recipe, str) else make_recipe
    resolved = resolve(recipe, **given["recipe"])
    settings = data_settings(data, given["data"])
    side = settings.image_size if isinstance(settings, DataSettings) else settings.input_size[1]

    def checks() -> None:
        get_entry(arch)
        # Before any data is decoded: the fewest classes a data set has (two) give a lower
        # bound that holds for every data set, so a step that cannot fit is refused at once.
        with torch.device("meta"):  # no memory: only the shapes
            model = create_model(arch, 2, choose_stem(stem_name(stem), side))
        step_fits(model, side, resolved.batch_size, run)

    with training_run(run, checks):
        dataset = settings if isinstance(settings, Dataset) else load_data(settings)
        seed_everything(run.seed)
        return fit(
            create_model(
                arch, dataset.num_classes, choose_stem(stem_name(stem), dataset.input_size[1])
            ),
            dataset,
            resolved,
            run,
            kind=kind,
            arch=arch,
            meta={"pipeline": dict(provenance)} if provenance else None,
            console=console or progress_console(run.quiet),
            stop_after_steps=stop_after_steps,
            on_epoch=on_epoch,
        )


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

    given = split_overrides(
        overrides, "import_teacher", recipe=RECIPE_FIELDS, data=DATA_FIELDS, run=RUN_FIELDS
    )
    run = run_settings(out, quiet, given["run"], run)
    resolved = teacher_recipe(recipe, **given["recipe"]) if isinstance(recipe, str) else recipe
    return fine_tune(
        spec,
        weights,
        data_settings(data, given["data"]),
        resolved,
        run,
        console=console or progress_console(run.quiet),
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
    `budget` (e.g. "5M") is checked before any data is decoded. `kd`: a method's name
    (`distill kd-methods`), a mapping of KDSettings fields (`{"method": "dkd", "beta": 4}`),
    or a KDSettings; None: KDSettings' defaults (Hinton). `recipe`, `run`, `provenance`,
    `stop_after_steps`, `on_epoch` as in `train_teacher`. Checked before any file is written,
    cheapest first: the architecture and output, the teacher files, the budget, the data against
    the teachers' (distill/teacher_checks.py).
    """
    given = split_overrides(
        overrides, "train_student", recipe=RECIPE_FIELDS, data=DATA_FIELDS, run=RUN_FIELDS
    )
    teachers_at = paths(teacher, "teacher")
    run = run_settings(out, quiet, given["run"], run)
    data = model_data(teachers_at[0], f"teacher {teachers_at[0]}", data, given["data"])
    recipe = recipe_of(recipe, given["recipe"])
    kd = kd_settings(kd)
    limit = parse_budget(budget)
    console = console or progress_console(run.quiet)
    side = data.image_size if isinstance(data, DataSettings) else data.input_size[1]
    stem = choose_stem(stem_name(stem), side)

    def checks() -> list[dict[str, Any]]:
        get_entry(arch)
        ckpts = read_teachers(teachers_at)
        # The budget needs only the class count, which the teachers already tell: check it
        # before decoding any data (that writes a cache). A meta-device model costs no memory.
        with torch.device("meta"):
            student = create_model(arch, len(ckpts[0]["classes"]), stem)
            check_budget(student, limit, f"--arch {arch}")
        step_fits(student, side, recipe.batch_size, run)
        return ckpts

    reads = [("the teacher it learns from", t) for t in teachers_at]
    with training_run(run, checks, reads) as ckpts:
        dataset = (
            data if isinstance(data, Dataset) else load_teacher_data(teachers_at, ckpts[0], data)
        )
        device = resolve_device(run.device)
        teachers, records = load_teachers(
            teachers_at, dataset, device, channels_last=recipe.channels_last, checkpoints=ckpts
        )
        del ckpts  # the teachers' weights now live in their modules; don't hold a second copy
        for r in records:
            acc = r["val_accuracy"]
            text = f"{acc:.2%}" if isinstance(acc, float) and math.isfinite(acc) else "n/a"
            console.print(f"teacher {r['path']}: {r['arch']}, val top-1 {text}")
        seed_everything(run.seed)
        model = create_model(arch, dataset.num_classes, stem)
        for note in kd_notes(kd, dataset.num_classes):
            console.print(f"note: {note}")
        kd = resolve_kd(kd, recipe.epochs, dataset.num_classes)
        return fit(
            model,
            dataset,
            recipe,
            run,
            kind="student",
            arch=arch,
            objective=make_objective(model, teachers, kd, dataset, recipe, device, run.seed),
            meta={"teachers": records, "kd": kd_record(kd), "pipeline": provenance},
            identity={
                "teacher files": [r["sha256"] for r in records],
                "KD settings": kd_record(kd),
            },
            console=console,
            stop_after_steps=stop_after_steps,
            on_epoch=on_epoch,
        )


def step_fits(model: torch.nn.Module, side: int, batch: int, run: RunSettings) -> None:
    """Refuse, before any data is decoded or cached, a training step of `model` (built on the
    meta device) that cannot fit on the run's device (distill/memory.py: lower bounds, so a
    refusal is never wrong). `fit` checks again once the data is known."""
    # The meta-device pass is what imports torch._dynamo (its meta kernels), which the
    # optimizer's first step would import anyway: this phase carries that import, 0.9-1.8 s.
    with phase("memory check, before the data"):
        check_training_step(model, (3, side, side), batch, resolve_device(run.device))


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
    from distill.run_guard import check_run_output
    from distill.train_setup import check_processes

    check_run_output(run)
    if arch is not None:
        get_entry(arch)
    if recipe is not None:
        resolve = teacher_recipe if kind == "teacher" and isinstance(recipe, str) else make_recipe
        resolved = resolve(recipe, **overrides)
        check_processes(resolved, run, processes, resolve_device(run.device).type == "cuda")
