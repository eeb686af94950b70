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
from distill.errors import UserError, first_line
from distill.evaluation import EvalResult, eval_loader, evaluate
from distill.files import WriteError, atomic_save
from distill.losses import CrossEntropy, hard_labels
from distill.memory import TooLarge, check_training_step, out_of_memory
from distill.progress import (
    MetricsLog,
    announce,
    epoch_line,
    plural,
    progress_bar,
    stats_text,
)
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
from distill.settings import Recipe, RunSettings
from distill.timing import phase
from distill.tracking import Tracker
from distill.train_setup import Objective, Sums, Trainer, make_trainer

# Steps between host syncs (progress, the NaN check, the stop flag) on a GPU, where a sync
# stalls the queue of kernels. A CPU step is synchronous anyway: sync every step there, so the
# progress bar moves with each one instead of once a minute.
SYNC_EVERY = 20


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
    pause: Callable[[int, Sums, bool], bool] = lambda step, sums, synced: False,
) -> int:
    """Train steps `start_step`.. of `epoch`, adding to `sums`; return the step reached.

    After every step `pause(step, sums, synced)` may end the call early (to save the state, or
    to stop); `synced` is True every SYNC_EVERY steps (every step on a CPU) and at the epoch's
    last, after the loss
    was read back and checked finite. Calling again from the step reached continues the epoch
    exactly: each step's batch and augmentation are seeded by (epoch, step).
    """
    t.model.train()
    steps = len(t.loader)
    every = 1 if t.device.type == "cpu" else SYNC_EVERY
    sync_grads = getattr(t.objective, "sync_grads", None)
    for step, batch in enumerate(t.loader.batches(epoch, start_step), start=start_step):
        y = batch.targets
        with autocast(t.device, t.precision):
            logits, loss = t.objective.forward_train(t.model, batch, epoch + step / steps)
        t.optimizer.zero_grad(set_to_none=True)
        if t.scaler is not None:
            t.scaler.scale(loss).backward()
            t.scaler.unscale_(t.optimizer)  # clipping must see the true gradients
        else:
            loss.backward()
        if sync_grads is not None:
            sync_grads()
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
        synced = (step + 1) % every == 0 or step + 1 == steps
        if synced:
            bad = not math.isfinite(float(sums.loss) / sums.seen)  # host sync point
            # One rank's NaN stops every rank at this step: alone it would leave the others
            # waiting in their next collective until the timeout.
            (bad,) = distributed.any_rank([bad], t.device)
            if bad:
                raise _Diverged(epoch, step)
        if pause(step + 1, sums, synced):
            return step + 1
    return steps


class _Diverged(Exception):
    def __init__(self, epoch: int, step: int, where: str = "training") -> None:
        self.epoch, self.step, self.where = epoch, step, where


def _finite(model: nn.Module) -> bool:
    """Every floating weight and buffer (BatchNorm's running statistics too) is finite: a model
    with an infinite weight can still give a finite training loss in train mode."""
    tensors = [v for v in model.state_dict().values() if v.is_floating_point()]
    return not tensors or bool(torch.stack([v.isfinite().all() for v in tensors]).all())  # sync


def _check_memory(model: nn.Module, data: Dataset, recipe: Recipe, device: torch.device) -> None:
    """The step's check again, now with the real class count, and with the data set where it
    lives on the GPU."""
    on_gpu = sum(s.images.numel() for s in (data.train, data.val)) if device.type == "cuda" else 0
    check_training_step(model, data.input_size, recipe.batch_size, device, on_gpu)


class _Watch:
    """What `fit` watches between steps: the progress bar, a stop request (Ctrl-C, SIGTERM, or
    a test's step limit) and whether a state save is due. Under several processes the answer
    is agreed at synced steps, so every rank pauses at the same step."""

    def __init__(
        self,
        progress: Any,
        stop: StopFlag,
        device: torch.device,
        steps: int,
        stop_after_steps: int | None,
        state: State,
        kd: bool,
    ) -> None:
        self.progress, self.stop, self.device, self.steps = progress, stop, device, steps
        self.kd = kd  # the loss shown is a KD objective
        self.task = progress.add_task("training", total=steps, stats="")
        self.stop_after_steps = stop_after_steps
        self.first_step = state.epoch * steps + state.step
        self.last_save = time.perf_counter()
        self.stopping = False

    def begin(self, epoch: int, step: int, seen_before: int, epochs: int) -> None:
        self.epoch, self.seen_before = epoch, seen_before
        self.epoch_started = time.perf_counter()
        self.progress.reset(
            self.task, total=self.steps, completed=step, stats="",
            description=f"epoch {epoch + 1}/{epochs}",
        )  # fmt: skip

    def pause(self, step: int, sums: Sums, synced: bool) -> bool:
        done = self.epoch * self.steps + step - self.first_step
        limit = self.stop_after_steps
        wanted = self.stop.requested or (limit is not None and done >= limit)
        if not synced:  # one process checks every step; several, at syncs only
            self.stopping = wanted and not distributed.active()
            return self.stopping
        stats = stats_text(sums, self.seen_before, self.epoch_started, self.kd)
        self.progress.update(self.task, completed=step, stats=stats)
        due = self._seconds_since_save() > STATE_SAVE_SECONDS and step < self.steps
        self.stopping, due = distributed.any_rank([wanted, due], self.device)
        return self.stopping or due

    def save_due(self, final: bool) -> bool:
        (due,) = distributed.any_rank(
            [self._seconds_since_save() > STATE_SAVE_SECONDS], self.device
        )
        return due and not final

    def saved(self) -> None:
        self.last_save = time.perf_counter()

    def _seconds_since_save(self) -> float:
        return time.perf_counter() - self.last_save


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
    on_epoch: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Train `model`, validate each epoch, return (and write to `run.out`) the best checkpoint.

    `meta` adds checkpoint fields (teachers, kd, pruning); `identity` adds what a resumed run
    must share with the saved one beyond architecture, recipe, data and seed; `on_finish`
    completes the final checkpoint before it is written. `on_epoch(record)` runs on every rank
    after each epoch's validation (a study's pruner); True ends training there like an early
    stop, keeping the best weights so far. `run.out=None`
    trains in memory only (pruning's fine-tuning between steps). `stop_after_steps` simulates a
    Ctrl-C after that many optimizer steps (tests of resume).
    """
    console = console or make_console(run.quiet, stderr=True)
    device = resolve_device(run.device)
    distributed.init(device.type)
    configure_for_training(device)
    objective = objective or CrossEntropy(recipe.label_smoothing)
    with phase("memory check and trainer build"):
        _check_memory(model, data, recipe, device)
        t = make_trainer(model, data, recipe, run, device, objective)
    writes = run.out is not None and distributed.is_main()
    state_file = last_path(run.out) if run.out is not None else None
    tracker = None
    if writes and run.mlflow:
        stage = ((meta or {}).get("pipeline") or {}).get("stage")
        params = _params(kind, arch, recipe, data, meta)
        tracker = Tracker(run.mlflow, run.out.stem, params, parent=run.mlflow_parent, stage=stage)
        meta = {**(meta or {}), "tracking": tracker.record}
    log = MetricsLog(run.out, run.tensorboard, tracker) if writes else None
    run_identity = {
        "architecture": t.net.channel_plan().to_dict(),
        "recipe": recipe.to_dict(),
        "data": _data_key(data),
        "seed": run.seed,
        "world_size": distributed.world_size(),
        **(identity or {}),
    }
    state = State()
    if run.resume:  # a state file one rank cannot read is every rank's error
        state = distributed.agree(lambda: restore(t, state_file, run_identity, console))
    channels_last = recipe.channels_last
    val_loader = eval_loader(data.val, data, device, channels_last)
    best_val: EvalResult | None = None  # the best weights' validation, when this process ran it
    teacher = getattr(t.objective, "teacher_logits", None)

    def snapshot(st: State) -> dict[str, Any]:
        """Everything needed to continue at (st.epoch, st.step) exactly."""
        elapsed = st.elapsed + (time.perf_counter() - t_start)
        return _checkpoint(t.net, data, recipe, kind, arch, st.history, meta) | {
            "train_state": training_state(t, st, elapsed, run_identity)
        }

    def save_state(st: State) -> None:
        with phase("resumable state save"):
            snap = snapshot(st)  # every rank takes part (the RNG gather)
            _written(lambda: atomic_save(snap, state_file) if writes else None, state_file)

    announce(console, t, data, recipe, run, state)
    kd = hasattr(t.objective, "teacher_logits")  # the loss shown is the KD objective
    stop = StopFlag()
    t_start = time.perf_counter()
    steps = len(t.loader)
    try:
        with stop.installed(), progress_bar(console) as progress:
            watch = _Watch(progress, stop, device, steps, stop_after_steps, state, kd)
            for epoch in range(state.epoch, recipe.epochs):
                sums = Sums.zeros(device)
                step = state.step if epoch == state.epoch else 0
                if state.sums is not None:  # resuming mid-epoch: keep the epoch's sums whole
                    sums.restore(state.sums)
                    state.sums = None
                watch.begin(epoch, step, sums.seen, recipe.epochs)
                while step < steps:
                    try:
                        with phase(f"epoch {epoch + 1} steps"):
                            step = train_one_epoch(
                                t, epoch, sums, start_step=step, pause=watch.pause
                            )
                    except _Diverged as d:
                        raise _diverged(d, t, state_file, recipe) from None
                    if watch.stopping:
                        save_state(mid_epoch(state, epoch, step, sums))
                        raise TrainingInterrupted(state_file)
                    if step < steps:  # paused because a state save was due
                        save_state(mid_epoch(state, epoch, step, sums))
                        watch.saved()
                seconds = time.perf_counter() - watch.epoch_started
                # The last epoch also measures the agreement with the teacher that the final
                # checkpoint records, so that its validation serves as the final one.
                last = epoch + 1 == recipe.epochs
                with phase(f"epoch {epoch + 1} validation"):
                    val = evaluate(t.eval_model, val_loader, reference=teacher if last else None)
                if not (math.isfinite(val.loss) and _finite(t.eval_model)):
                    raise _diverged(
                        _Diverged(epoch, steps - 1, "validation"), t, state_file, recipe
                    )
                record = _epoch_record(t, epoch, sums, val, seconds, watch.seen_before)
                state.history.append(record)
                console.print(epoch_line(record, recipe.epochs, kd))
                if log is not None:
                    log.write(state.history)
                early = _after_validation(t, state, val, epoch)
                if state.best["epoch"] == epoch + 1:
                    best_val = val
                cut = on_epoch is not None and on_epoch(record)
                state.epoch, state.step = epoch + 1, 0
                done = epoch + 1 == recipe.epochs
                if watch.save_due(final=done):
                    save_state(state)
                    watch.saved()
                if early and not done:
                    console.print(
                        "early stop: val loss has not improved for "
                        f"{plural(state.bad_epochs, 'epoch')}"
                    )
                    break
                if cut and not done:
                    console.print(f"stopped after epoch {epoch + 1}: its curve was cut short")
                    break
        if run.keep_last:  # the final training state, kept to train on from it later
            save_state(state)
    except BaseException as e:
        if tracker is not None:
            tracker.abandon()
        if out_of_memory(e):  # the estimate is a lower bound: the real peak may not fit
            raise TooLarge(
                f"the {device.type.upper() if device.type == 'cuda' else 'machine'} ran out of "
                f"memory training at batch {recipe.batch_size:,} ({first_line(e, 80)}); lower "
                "--batch-size"
            ) from None
        raise
    finally:
        if log is not None:
            log.close()
        close = getattr(t.objective, "close", None)
        if close is not None:  # a method's hooks come off the model when its run ends
            close()
    state.elapsed += time.perf_counter() - t_start
    try:
        ckpt = _finish(
            t, state, data, val_loader, recipe, run, kind, arch, meta, on_finish, best_val
        )
    except BaseException:
        if tracker is not None:
            tracker.abandon()
        raise
    if tracker is not None:
        tracker.finish([run.out], ckpt["metrics"])
    if writes and state_file.exists() and not run.keep_last:
        state_file.unlink()
    return ckpt


def _params(
    kind: str, arch: str, recipe: Recipe, data: Dataset, meta: dict[str, Any] | None
) -> dict[str, Any]:
    """What a tracking run records as its params: what the checkpoint says it learned from."""
    extra = {k: meta[k] for k in ("kd", "origin") if meta and meta.get(k)}
    teachers = [t["arch"] for t in (meta or {}).get("teachers") or []]
    return {
        "kind": kind,
        "arch": arch,
        "recipe": recipe.to_dict(),
        "data": data.info,
        **({"teachers": ",".join(teachers)} if teachers else {}),
        **extra,
    }


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
        # --lr on resume is the lr of the run's global batch (Recipe.peak_lr): half of it is
        # below what diverged at any batch size.
        lower = recipe.peak_lr(distributed.world_size()) / 2
        way = (
            f"the last good state is in {state_file}: continue from it with --resume and a lower "
            f"--lr (e.g. --lr {lower:.3g}, half the peak lr that diverged), or start over with "
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
    best_val: EvalResult | None = None,
) -> dict[str, Any]:
    """Load the best weights, measure them, write and return the final checkpoint. `best_val`:
    their validation as the epoch measured it, reused when it holds all the checkpoint records
    (validation is deterministic: a second pass over the same weights, the time of a whole
    epoch's validation, would give the same numbers)."""
    net, device = t.net, t.device
    if state.best["state"] is not None:
        net.load_state_dict(state.best["state"])
    teacher = getattr(t.objective, "teacher_logits", None)
    if best_val is not None and (teacher is None or best_val.agreement is not None):
        val = best_val
    else:
        with phase("final evaluation"):
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
        "peak_lr": t.optimizer.defaults["lr"],  # what the optimizer was given: Recipe.peak_lr
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
    with phase("checkpoint save"):
        _written(lambda: atomic_save(ckpt, run.out) if writes else None, state_file)
    return ckpt
