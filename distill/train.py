"""The training loop shared by teachers, students and pruning recovery, written the way the
torchvision references write theirs: `train_one_epoch`, then `evaluate`, in `fit`.

`fit` trains any model on a `Dataset` with a `Recipe` and an objective (cross-entropy, or a
distillation objective from `distill.losses`), validates every epoch in float32, keeps the best
weights and writes a self-describing checkpoint, a `NAME.metrics.csv` as it goes, and the
resumable `NAME.last.pt` (distill/resume.py). Under torchrun the same code runs on every rank:
the model is wrapped in DistributedDataParallel, each rank draws its own shard of every epoch,
sums are all-reduced, and only rank 0 writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from distill import distributed
from distill.budget import count_macs, count_params
from distill.checkpoint import cpu_state_dict, new_checkpoint
from distill.console import make_console
from distill.data import BatchLoader, Dataset
from distill.device import (
    autocast,
    configure_for_training,
    resolve_device,
)
from distill.errors import UserError
from distill.evaluation import EvalResult, eval_loader, evaluate
from distill.files import WriteError, atomic_save
from distill.losses import CrossEntropy, hard_labels
from distill.memory import activation_bytes, require
from distill.resume import (
    STATE_SAVE_SECONDS,
    State,
    StopFlag,
    TrainingInterrupted,
    last_path,
    mid_epoch,
    restore,
    training_state,
)
from distill.run_log import MetricsLog, announce, epoch_line, progress_bar, stats_text
from distill.settings import Recipe, RunSettings
from distill.trainer import Objective, Sums, Trainer, make_trainer

SYNC_EVERY = 20  # steps between host syncs: progress, the NaN check, the stop flag


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class OutputNotWritten(WriteError):
    """Writing the run's checkpoint or resumable state failed (a full disk); training stopped.
    `resume_from`: the last resumable state that was written, if any."""

    def __init__(self, error: WriteError, resume_from: Path | None) -> None:
        super().__init__(f"{error}; training stopped")
        self.resume_from = resume_from


def _written(write: Callable[[], Any], state_file: Path | None) -> None:
    """Run rank 0's `write` so that every rank learns whether it worked (a failure on rank 0
    alone would leave the others waiting at the next collective)."""
    try:
        distributed.agree(write)
    except WriteError as e:
        resumable = state_file if state_file is not None and state_file.exists() else None
        raise OutputNotWritten(e, resumable) from None


def train_one_epoch(
    t: Trainer,
    epoch: int,
    sums: Sums,
    *,
    start_step: int = 0,
    on_step: Callable[[int, Sums, bool], bool] = lambda step, sums, synced: False,
) -> tuple[int, bool]:
    """Train steps `start_step`.. of `epoch`, adding to `sums`; return (step reached, stopped).

    After every step `on_step(step, sums, synced)` runs; `synced` is True every SYNC_EVERY steps
    and at the epoch's last, after the loss was read back and checked finite. When `on_step`
    returns True the epoch stops there (a stop was requested).
    """
    t.model.train()
    steps = len(t.loader)
    for step, (x, y) in enumerate(t.loader.epoch(epoch, start_step), start=start_step):
        with autocast(t.device, t.precision):
            logits = t.model(x)
            loss = t.objective(logits, y, x, epoch + step / steps)
        t.optimizer.zero_grad(set_to_none=True)
        if t.scaler is not None:
            t.scaler.scale(loss).backward()
            t.scaler.unscale_(t.optimizer)  # clipping must see the true gradients
        else:
            loss.backward()
        if t.recipe.grad_clip:
            nn.utils.clip_grad_norm_(t.net.parameters(), t.recipe.grad_clip)
        if t.scaler is not None:
            t.scaler.step(t.optimizer)
            t.scaler.update()
        else:
            t.optimizer.step()
        if t.lookahead:
            t.lookahead.after_step()
        if t.ema:
            t.ema.update(t.net)
        if t.per_step:
            t.scheduler.step()
        sums.loss += loss.detach().double() * len(y)
        sums.correct += (logits.argmax(1) == hard_labels(y)).sum()
        sums.seen += len(y)
        synced = (step + 1) % SYNC_EVERY == 0 or step + 1 == steps
        if synced and not math.isfinite(float(sums.loss) / sums.seen):  # host sync point
            raise _Diverged(epoch, step)
        if on_step(step + 1, sums, synced):
            return step + 1, True
    return steps, False


class _Diverged(Exception):
    def __init__(self, epoch: int, step: int, where: str = "training") -> None:
        self.epoch, self.step, self.where = epoch, step, where


def _finite(model: nn.Module) -> bool:
    """Every floating weight and buffer (BatchNorm's running statistics too) is finite: a model
    with an infinite weight can still give a finite training loss in train mode."""
    tensors = [v for v in model.state_dict().values() if v.is_floating_point()]
    return not tensors or bool(torch.stack([v.isfinite().all() for v in tensors]).all())  # sync


def _check_memory(model: nn.Module, data: Dataset, recipe: Recipe, device: torch.device) -> None:
    """Refuse a step that cannot fit before the first one tries: activations kept for the
    backward pass, and weights, gradients, momentum and an average (4 copies, float32)."""
    params = sum(p.numel() for p in model.parameters())
    need = activation_bytes(model, data.input_size, recipe.batch_size) + 16 * params
    if device.type == "cuda":  # the data set lives on the GPU too
        need += sum(s.images.numel() for s in (data.train, data.val))
    require(
        need,
        f"a training step of {recipe.batch_size:,} images at {data.input_size[1]}x"
        f"{data.input_size[2]}",
        "lower --batch-size",
        device,
    )


def _data_key(data: Dataset) -> dict[str, Any]:
    return {k: data.info.get(k) for k in ("source_id", "split_seed", "train_size", "val_size")}


def fit(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    run: RunSettings,
    *,
    kind: str,
    arch: str,
    objective: Objective | None = None,
    meta: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    console: Console | None = None,
    stop_after_steps: int | None = None,
    on_finish: Callable[[dict[str, Any]], dict[str, Any]] = lambda ckpt: ckpt,
) -> dict[str, Any]:
    """Train `model`, validate each epoch, return (and write to `run.out`) the best checkpoint.

    `meta` adds checkpoint fields (teachers, kd, pruning); `identity` adds what a resumed run
    must share with the saved one beyond architecture, recipe, data and seed; `on_finish`
    completes the final checkpoint before it is written. `run.out=None`
    trains in memory only (pruning's fine-tuning between steps). `stop_after_steps` simulates a
    Ctrl-C after that many optimizer steps (tests of resume).
    """
    console = console or make_console(run.quiet, stderr=True)
    device = resolve_device(run.device)
    distributed.init(device.type)
    configure_for_training(device)
    objective = objective or CrossEntropy(recipe.label_smoothing)
    _check_memory(model, data, recipe, device)
    t = make_trainer(model, data, recipe, run, device, objective)
    writes = run.out is not None and distributed.is_main()
    state_file = last_path(run.out) if run.out is not None else None
    log = MetricsLog(run.out, run.tensorboard) if writes else None
    run_identity = {
        "architecture": t.net.channel_plan().to_dict(),
        "recipe": recipe.to_dict(),
        "data": _data_key(data),
        "seed": run.seed,
        "world_size": distributed.world_size(),
        **(identity or {}),
    }
    state = State()
    if run.resume:
        state = restore(t, state_file, run_identity, console)
    channels_last = recipe.channels_last
    val_loader = eval_loader(data.val, data, device, channels_last)

    def snapshot(st: State) -> dict[str, Any]:
        """Everything needed to continue at (st.epoch, st.step) exactly."""
        elapsed = st.elapsed + (time.perf_counter() - t_start)
        return _checkpoint(t.net, data, recipe, kind, arch, st.history, meta) | {
            "train_state": training_state(t, st, elapsed, run_identity)
        }

    def save_state(st: State) -> None:
        snap = snapshot(st)  # every rank takes part (the RNG gather)
        _written(lambda: atomic_save(snap, state_file) if writes else None, state_file)

    announce(console, t, data, recipe, run, state)
    stop = StopFlag()
    t_start = time.perf_counter()
    last_save = t_start
    steps = len(t.loader)
    global_step = state.epoch * steps + state.step
    try:
        with stop.installed(), progress_bar(console) as progress:
            task = progress.add_task("training", total=steps, stats="")
            for epoch in range(state.epoch, recipe.epochs):
                sums = Sums.zeros(device)
                first = state.step if epoch == state.epoch else 0
                if state.sums is not None:  # resuming mid-epoch: keep the epoch's sums whole
                    sums.restore(state.sums)
                    state.sums = None
                progress.reset(
                    task, total=steps, completed=first, stats="",
                    description=f"epoch {epoch + 1}/{recipe.epochs}",
                )  # fmt: skip
                t_epoch, seen_before = time.perf_counter(), sums.seen

                def on_step(
                    step: int,
                    sums: Sums,
                    synced: bool,
                    epoch: int = epoch,
                    seen_before: int = seen_before,
                    t_epoch: float = t_epoch,
                ) -> bool:
                    nonlocal last_save
                    done = epoch * steps + step - global_step
                    wanted = stop.requested or (
                        stop_after_steps is not None and done >= stop_after_steps
                    )
                    if not synced:  # one process checks every step; several, at syncs only
                        return wanted and not distributed.active()
                    stats = stats_text(sums, seen_before, t_epoch)
                    progress.update(task, completed=step, stats=stats)
                    due = time.perf_counter() - last_save > STATE_SAVE_SECONDS and step < steps
                    wanted, due = distributed.any_rank([wanted, due], device)
                    if due and not wanted:
                        save_state(mid_epoch(state, epoch, step, sums))
                        last_save = time.perf_counter()
                    return wanted

                try:
                    reached, stopped = train_one_epoch(
                        t, epoch, sums, start_step=first, on_step=on_step
                    )
                except _Diverged as d:
                    raise _diverged(d, t, state_file, recipe) from None
                if stopped:
                    save_state(mid_epoch(state, epoch, reached, sums))
                    raise TrainingInterrupted(state_file)
                seconds = time.perf_counter() - t_epoch
                val = evaluate(t.eval_model, val_loader)
                if not (math.isfinite(val.loss) and _finite(t.eval_model)):
                    raise _diverged(
                        _Diverged(epoch, steps - 1, "validation"), t, state_file, recipe
                    )
                record = _epoch_record(t, epoch, sums, val, seconds, seen_before)
                state.history.append(record)
                console.print(epoch_line(record, recipe.epochs))
                if log is not None:
                    log.write(state.history)
                early = _after_validation(t, state, val, epoch)
                state.epoch, state.step = epoch + 1, 0
                done = epoch + 1 == recipe.epochs
                (due,) = distributed.any_rank(
                    [time.perf_counter() - last_save > STATE_SAVE_SECONDS], device
                )
                if due and not done:
                    save_state(state)
                    last_save = time.perf_counter()
                if early and not done:
                    console.print(
                        f"early stop: val loss has not improved for {state.bad_epochs} epochs"
                    )
                    break
        if run.keep_last:  # the final training state, kept to train on from it later
            save_state(state)
    finally:
        if log is not None:
            log.close()
    state.elapsed += time.perf_counter() - t_start
    ckpt = _finish(t, state, data, val_loader, recipe, run, kind, arch, meta, on_finish)
    if writes and state_file.exists() and not run.keep_last:
        state_file.unlink()
    return ckpt


def _epoch_record(
    t: Trainer, epoch: int, sums: Sums, val: EvalResult, seconds: float, seen_before: int
) -> dict[str, Any]:
    # Training sums are per rank: add them up (count-weighted) before dividing.
    totals = torch.stack([sums.loss, sums.correct.double()]).double()
    seen = torch.tensor([float(sums.seen), float(sums.seen - seen_before)], device=totals.device)
    distributed.all_reduce_sum(totals)
    distributed.all_reduce_sum(seen)
    loss, correct = totals.tolist()
    n, new = seen.tolist()
    return {
        "epoch": epoch + 1,
        "lr": t.optimizer.param_groups[0]["lr"],
        "train_loss": loss / max(n, 1),
        "train_accuracy": correct / max(n, 1),
        "val_loss": val.loss,
        "val_accuracy": val.accuracy,
        "seconds": seconds,
        "images_per_s": new / max(seconds, 1e-9),
    }


def _after_validation(t: Trainer, state: State, val: EvalResult, epoch: int) -> bool:
    """Schedule on val loss, keep the best weights, count epochs without improvement; return
    whether early stopping says stop."""
    if not t.per_step:
        t.scheduler.step(val.loss)
    if val.accuracy > state.best["accuracy"]:
        state.best = {
            "accuracy": val.accuracy,
            "state": cpu_state_dict(t.eval_model),
            "epoch": epoch + 1,
        }
    if val.loss < state.val_loss_best:
        state.val_loss_best, state.bad_epochs = val.loss, 0
    else:
        state.bad_epochs += 1
    patience = t.recipe.early_stop_patience
    return bool(patience) and state.bad_epochs >= patience


def _diverged(d: _Diverged, t: Trainer, state_file: Path | None, recipe: Recipe) -> UserError:
    where = f"epoch {d.epoch + 1}, step {d.step + 1}"
    if state_file is not None and state_file.exists():
        way = (
            f"the last good state is in {state_file}: continue from it with --resume and a lower "
            f"--lr (e.g. --lr {recipe.lr_at(recipe.lr_batch) / 2:g}), or start over with "
            "--force and other settings"
        )
    else:
        way = "no resumable state was saved before it; rerun with lower values"
    what = "the loss" if d.where == "training" else "the validation loss or a weight"
    return TrainingDiverged(
        f"{what} became NaN or infinite in {where}; lower {t.objective.suspects}; {way}"
    )


def _checkpoint(
    net: nn.Module,
    data: Dataset,
    recipe: Recipe,
    kind: str,
    arch: str,
    history: list[dict[str, Any]],
    meta: dict[str, Any] | None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint of a training run: the model, what it learned from and how."""
    return new_checkpoint(
        kind=kind,
        arch=arch,
        model=net,
        classes=list(data.classes),
        mean=list(data.mean),
        std=list(data.std),
        input_size=list(data.input_size),
        recipe=recipe.to_dict(),
        data=data.info,
        metrics=metrics,
        history=history,
        **(meta or {}),
    )


def _finish(
    t: Trainer,
    state: State,
    data: Dataset,
    val_loader: BatchLoader,
    recipe: Recipe,
    run: RunSettings,
    kind: str,
    arch: str,
    meta: dict[str, Any] | None,
    on_finish: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """Load the best weights, measure them, write and return the final checkpoint."""
    net, device = t.net, t.device
    if state.best["state"] is not None:
        net.load_state_dict(state.best["state"])
    teacher = getattr(t.objective, "teacher_logits", None)
    val = evaluate(net, val_loader, reference=teacher)
    metrics: dict[str, Any] = {
        "val_accuracy": val.accuracy,
        "val_top5": val.top5,
        "val_loss": val.loss,
        "per_class": val.per_class,
        "confusion": val.confusion,
        "best_epoch": state.best["epoch"],
        "epochs_run": len(state.history),
        "params": count_params(net),
        "macs": count_macs(net, tuple(data.input_size)),
        "train_seconds": state.elapsed,
        "device": str(device),
        "processes": distributed.world_size(),
        "precision": t.precision.name,
    }
    if val.agreement is not None:
        metrics["teacher_agreement"] = val.agreement
    if data.test is not None:
        channels_last = val_loader.channels_last
        metrics["test_accuracy"] = evaluate(
            net, eval_loader(data.test, data, device, channels_last)
        ).accuracy
    ckpt = on_finish(_checkpoint(net, data, recipe, kind, arch, state.history, meta, metrics))
    writes = run.out is not None and distributed.is_main()
    state_file = last_path(run.out) if run.out is not None else None
    _written(lambda: atomic_save(ckpt, run.out) if writes else None, state_file)
    return ckpt
