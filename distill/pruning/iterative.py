"""`distill prune`: a checkpoint in, pruned to a parameter budget with KD fine-tuning between the
steps and a final KD recovery, a `kind="pruned"` checkpoint out (SPEC 5).

The mechanics are search.py beside it. Here: the checks (all before the data is decoded, and the
budget's reachability before anything else), the teachers (given ones, or the unpruned model
itself: self-distillation), the fine-tuning and recovery runs, and the pruning record. The
pruned model is saved as a channel plan + state dict that rebuilds from plain values, never as a
pickled module. Only the recovery phase is resumable: the pruning steps are held in memory, so an
interruption there saves nothing.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from distill import distributed
from distill.budget import count_macs, count_params, parse_budget
from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.console import make_console
from distill.data import BatchLoader, Dataset, DataSettings, load_data
from distill.device import resolve_device, seed_everything
from distill.errors import UserError
from distill.evaluation import eval_loader, evaluate
from distill.files import file_sha256
from distill.kd.objective import KDObjective, make_objective
from distill.pruning.search import (
    TAYLOR_BATCHES,
    PruneStep,
    check_reachable,
    prune_to_budget,
    rebuild,
)
from distill.registry import PRUNED, build_model
from distill.resume import TrainingInterrupted, last_path
from distill.run_guard import training_run
from distill.settings import KDSettings, PruneSettings, Recipe, RunSettings, kd_record, resolve_kd
from distill.teacher_checks import (
    check_model_fits_data,
    load_teachers,
    read_teachers,
    teacher_record,
)
from distill.train import fit
from students.resnet import CifarResNet
from teachers.imported import is_imported


class PruningInterrupted(UserError):
    """Ctrl-C or SIGTERM during the pruning steps: nothing was saved."""


def prune_checkpoint(
    model_path: str | Path,
    prune: PruneSettings,
    *,
    data: DataSettings | Dataset,
    recipe: Recipe,
    run: RunSettings,
    kd: KDSettings | None = None,
    teacher_paths: Sequence[str | Path] = (),
    console: Console | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Prune the model in `model_path` to `prune.budget` parameters, distilling between steps and
    in a final recovery phase (`prune.epochs`, default the recipe's); return the pruned
    checkpoint (written to `run.out`, which must be set).

    `data` must be the model's own validation split (`distill.settings.data_for_model`).
    Teachers: `teacher_paths`, or the unpruned model itself when none is given.
    """
    console = console or make_console(run.quiet, stderr=True)
    model_path, teachers_at = Path(model_path), [Path(p) for p in teacher_paths]
    kd = kd or KDSettings()
    recovery = replace(recipe, epochs=prune.epochs) if prune.epochs else recipe
    if run.out is None:
        raise ValueError("prune_checkpoint writes a checkpoint: set run.out")

    def checks() -> tuple[dict[str, Any], CifarResNet, int, list[dict[str, Any]]]:
        limit = parse_budget(prune.budget)
        src = load_checkpoint(model_path)
        if is_imported(src["model_config"]):
            raise UserError(
                f"{model_path} is an imported {src['arch']}; pruning rebuilds registry "
                "architectures only: distil it into a student (distill student --teacher "
                f"{model_path}) and prune that"
            )
        model = model_from_checkpoint(src)
        if count_params(model) <= limit:
            raise UserError(
                f"{model_path} already has {count_params(model):,} parameters, within the "
                f"budget of {limit:,}; nothing to prune: pass a lower --budget"
            )
        check_reachable(model, limit, torch.randn(1, *src["input_size"]), prune.round_to)
        return src, model, limit, read_teachers(teachers_at) if teachers_at else []

    reads = [("the model it prunes", Path(model_path))]
    reads += [("a teacher it learns from", t) for t in teachers_at]
    with training_run(run, checks, reads) as (src, source_model, limit, teacher_ckpts):
        dataset = data if isinstance(data, Dataset) else load_data(data)
        check_model_fits_data(model_path, src, dataset, "model")
        # The weights were learned under the source's normalisation: keep it for every phase.
        dataset = replace(dataset, mean=tuple(src["mean"]), std=tuple(src["std"]))
        device = resolve_device(run.device)
        seed_everything(run.seed)
        source_model = source_model.to(device)
        channels_last = recipe.channels_last
        if teachers_at:
            teachers, records = load_teachers(
                teachers_at, dataset, device, channels_last=channels_last, checkpoints=teacher_ckpts
            )
        else:
            # Self-distillation: the unpruned model teaches what it knew to its pruned self.
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            teachers = [copy.deepcopy(source_model).to(memory_format=fmt)]
            records = [teacher_record(model_path, src)]

        def objective(model: CifarResNet, epochs: int) -> KDObjective:
            # The KD warm-up is measured in the epochs of the run that distils; a method's
            # connectors are sized to the model as it is now (each prune step changes its plan).
            kd_now = resolve_kd(kd, epochs, dataset.num_classes)
            return make_objective(model, teachers, kd_now, dataset, recipe, device, run.seed)

        # The label a checkpoint reader checks the plan against (registry.label_disagrees).
        arch = src["arch"] if src["arch"].endswith(PRUNED) else src["arch"] + PRUNED
        identity = {
            "source model": file_sha256(model_path),
            "teacher files": [r["sha256"] for r in records],
            "KD settings": kd_record(resolve_kd(kd, recovery.epochs, dataset.num_classes)),
        }
        if run.resume:  # a state file one rank cannot read is every rank's error
            model, record = distributed.agree(lambda: _resumed(run.out))
        else:
            model, record = _prune_phase(
                source_model, limit, prune, model_path, src, dataset, recipe, run,
                objective, console,
            )  # fmt: skip
        del source_model
        _same_plan_on_every_rank(model)

        def complete(ckpt: dict[str, Any]) -> dict[str, Any]:
            # The recovered accuracy is known only now.
            ckpt["pruning"] = record | {"val_accuracy_after": ckpt["metrics"]["val_accuracy"]}
            return ckpt

        return fit(
            model,
            dataset,
            recovery,
            run,
            kind="pruned",
            arch=arch,
            objective=objective(model, recovery.epochs),
            meta={
                "teachers": records,
                "kd": kd_record(resolve_kd(kd, recovery.epochs, dataset.num_classes)),
                "pruning": record,
                "pipeline": provenance,
            },
            identity=identity,
            console=console,
            on_finish=complete,
        )


def _prune_phase(
    source_model: CifarResNet,
    limit: int,
    prune: PruneSettings,
    model_path: Path,
    src: dict[str, Any],
    dataset: Dataset,
    recipe: Recipe,
    run: RunSettings,
    objective: Callable[[CifarResNet, int], KDObjective],
    console: Console,
) -> tuple[CifarResNet, dict[str, Any]]:
    """Measure, prune step by step with KD fine-tuning in between, and rebuild from the plan."""
    device = next(source_model.parameters()).device
    example = torch.randn(1, *src["input_size"], device=device)
    loader = eval_loader(dataset.val, dataset, device)

    def val_accuracy(model: CifarResNet) -> float:
        _same_plan_on_every_rank(model)  # after each step, not after all the work
        return evaluate(model, loader).accuracy

    acc_before = val_accuracy(source_model)
    console.print(
        f"source {model_path}: {src['arch']}, {count_params(source_model):,} params, "
        f"val top-1 {acc_before:.2%}"
    )

    def finetune(model: CifarResNet, step: PruneStep) -> float:
        # In memory (no file), and without the test-set pass `fit` ends with when there is one.
        try:
            ckpt = fit(
                model,
                replace(dataset, test=None),
                # Eager: every step's network has new widths, so --compile would compile anew
                # for an epoch or two of training; the recovery phase below compiles once.
                replace(recipe, epochs=prune.epochs_per_step, compile=False),
                replace(run, out=None, resume=False, seed=run.seed + step.step, tensorboard=None),
                kind="pruned",
                arch=src["arch"],
                objective=objective(model, prune.epochs_per_step),
                console=console,
            )
        except TrainingInterrupted:
            raise PruningInterrupted(
                "interrupted while pruning (before the recovery phase): nothing was saved; "
                "run the command again"
            ) from None
        return ckpt["metrics"]["val_accuracy"]

    def taylor_batches(step: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        loader = BatchLoader.of(
            dataset, dataset.train, recipe.batch_size, device=device, shuffle=True, seed=run.seed
        )
        return itertools.islice(loader.epoch(step), TAYLOR_BATCHES)

    pruned, history = prune_to_budget(
        source_model,
        limit,
        example_inputs=example,
        importance=prune.importance,
        steps=prune.steps,
        round_to=prune.round_to,
        gradient_batches=taylor_batches,
        after_step=finetune if prune.epochs_per_step > 0 else None,
        evaluate_step=val_accuracy,
        log=console.print,
    )
    model = rebuild(pruned, example).cpu()
    input_size = tuple(dataset.input_size)
    record = {
        "source": {
            "path": str(model_path.resolve()),
            "sha256": file_sha256(model_path),
            "arch": src["arch"],
            "kind": src["kind"],
        },
        "budget": limit,
        "importance": prune.importance,
        "round_to": prune.round_to,
        "global_pruning": True,
        "steps_planned": prune.steps,
        "steps": len(history),
        "epochs_per_step": prune.epochs_per_step,
        "schedule": [asdict(s) for s in history],
        "params_before": count_params(source_model),
        "params_after": count_params(model),
        "macs_before": count_macs(source_model, input_size),
        "macs_after": count_macs(model, input_size),
        "val_accuracy_before": acc_before,
        "val_accuracy_pruned": history[-1].val_accuracy,
        "val_accuracy_after": None,  # filled in once the recovery phase has run
    }
    return model, record


def _same_plan_on_every_rank(model: CifarResNet) -> None:
    """Every rank pruned the same weights with the same batches, so every rank must hold the
    same plan; if one does not, distributed fine-tuning would mix different networks."""
    plan = json.dumps(model.channel_plan().to_dict(), sort_keys=True)
    hashes = distributed.gather(hashlib.sha256(plan.encode()).hexdigest())
    if len(set(hashes)) > 1:
        raise RuntimeError(f"the ranks pruned to different channel plans ({hashes}); aborting")


def _resumed(out: Path) -> tuple[CifarResNet, dict[str, Any]]:
    """The pruned model and record of an interrupted recovery phase (its weights, optimizer state
    and the checks that it is the same run are `fit`'s)."""
    state_file = last_path(out)
    if not state_file.exists():
        raise UserError(f"nothing to resume: {state_file} does not exist; drop --resume")
    saved = load_checkpoint(state_file)
    return build_model(saved["model_config"]), saved.get("pruning") or {}
