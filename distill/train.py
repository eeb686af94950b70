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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from distill import distributed
from distill.budget import count_macs, count_params
from distill.checkpoint import cpu_state_dict, load_checkpoint, new_checkpoint
from distill.console import make_console
from distill.data import BatchLoader, Dataset
from distill.device import (
    Precision,
    autocast,
    choose_precision,
    configure_for_training,
    resolve_device,
)
from distill.errors import UserError
from distill.evaluation import EvalResult, eval_loader, evaluate
from distill.files import WriteError, atomic_save
from distill.losses import CrossEntropy, hard_labels
from distill.metrics_log import MetricsLog
from distill.optim import EMA, Lookahead, make_optimizer, make_scheduler
from distill.resume import (
    STATE_SAVE_SECONDS,
    StopFlag,
    TrainingInterrupted,
    check_same_run,
    last_path,
)
from distill.settings import Recipe, RunSettings

SYNC_EVERY = 20  # steps between host syncs: progress, the NaN check, the stop flag
# A GPU-sized run on a CPU: more image passes than this gets one warning line before it starts.
CPU_WARN_IMAGE_PASSES = 3_000_000


class Objective(Protocol):
    """(student logits, targets, the augmented batch, progress in epochs) -> loss."""

    suspects: str  # the flags to lower when the loss diverges

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor, progress: float
    ) -> torch.Tensor: ...


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


@dataclass
class Sums:
    """An epoch's running sums, on the device (no per-step host sync)."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> Sums:
        return cls(
            torch.zeros((), device=device, dtype=torch.float64),
            torch.zeros((), device=device, dtype=torch.long),
        )

    def record(self) -> dict[str, Any]:
        return {"loss": float(self.loss), "correct": int(self.correct), "seen": self.seen}

    def restore(self, saved: dict[str, Any]) -> None:
        self.loss += saved["loss"]
        self.correct += saved["correct"]
        self.seen = saved["seen"]


@dataclass
class Trainer:
    """Everything a training step touches."""

    model: nn.Module  # what steps run: DDP- and/or compile-wrapped
    net: nn.Module  # the plain module under the wrappers (weights, checkpoints)
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_step: bool  # the scheduler steps per batch (else per epoch on val loss)
    loader: BatchLoader
    recipe: Recipe
    device: torch.device
    precision: Precision
    scaler: torch.amp.GradScaler | None = None
    lookahead: Lookahead | None = None
    ema: EMA | None = None

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema else self.net


@dataclass
class State:
    """Where a run is, everything `fit` keeps between epochs (saved in `.last.pt`)."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"accuracy": -1.0, "state": None, "epoch": -1}
    )
    val_loss_best: float = math.inf
    bad_epochs: int = 0
    elapsed: float = 0.0
    sums: dict[str, Any] | None = None  # the interrupted epoch's sums


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
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
        console=console,
        disable=console.quiet,
        transient=True,
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
    t = _make_trainer(model, data, recipe, run, device, objective)
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
        state = _restore(t, state_file, run_identity, console)
    channels_last = recipe.channels_last and device.type == "cuda"
    val_loader = eval_loader(data.val, data, device, channels_last)

    def snapshot(st: State) -> dict[str, Any]:
        """Everything needed to continue at (st.epoch, st.step) exactly."""
        rng = distributed.gather(torch.get_rng_state())
        return _checkpoint(t.net, data, recipe, kind, arch, st.history, meta) | {
            "train_state": {
                "model": cpu_state_dict(t.net),
                "optimizer": t.optimizer.state_dict(),
                "scheduler": t.scheduler.state_dict(),
                "scaler": t.scaler.state_dict() if t.scaler else None,
                "lookahead": t.lookahead.state_dict() if t.lookahead else None,
                "ema": t.ema.state_dict() if t.ema else None,
                "rng_cpu": rng,
                "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                "epoch": st.epoch,
                "step": st.step,
                "history": st.history,
                "best": st.best,
                "val_loss_best": st.val_loss_best,
                "bad_epochs": st.bad_epochs,
                "elapsed": st.elapsed + (time.perf_counter() - t_start),
                "sums": st.sums,
                "identity": run_identity,
            }
        }

    def save_state(st: State) -> None:
        snap = snapshot(st)  # every rank takes part (the RNG gather)
        _written(lambda: atomic_save(snap, state_file) if writes else None, state_file)

    _announce(console, t, data, recipe, run, state)
    stop = StopFlag()
    t_start = time.perf_counter()
    last_save = t_start
    steps = len(t.loader)
    global_step = state.epoch * steps + state.step
    try:
        with stop.installed(), _progress(console) as progress:
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
                    progress.update(task, completed=step, stats=_stats(sums, seen_before, t_epoch))
                    due = time.perf_counter() - last_save > STATE_SAVE_SECONDS and step < steps
                    wanted, due = distributed.any_rank([wanted, due], device)
                    if due and not wanted:
                        save_state(_mid_epoch(state, epoch, step, sums))
                        last_save = time.perf_counter()
                    return wanted

                try:
                    reached, stopped = train_one_epoch(
                        t, epoch, sums, start_step=first, on_step=on_step
                    )
                except _Diverged as d:
                    raise _diverged(d, t, state_file, recipe) from None
                if stopped:
                    save_state(_mid_epoch(state, epoch, reached, sums))
                    raise TrainingInterrupted(state_file)
                seconds = time.perf_counter() - t_epoch
                val = evaluate(t.eval_model, val_loader)
                record = _epoch_record(t, epoch, sums, val, seconds, seen_before)
                state.history.append(record)
                console.print(_epoch_line(record, recipe.epochs))
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
    finally:
        if log is not None:
            log.close()
    state.elapsed += time.perf_counter() - t_start
    ckpt = _finish(t, state, data, val_loader, recipe, run, kind, arch, meta, on_finish)
    if writes and state_file.exists() and not run.keep_last:
        state_file.unlink()
    return ckpt


def _make_trainer(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    run: RunSettings,
    device: torch.device,
    objective: Objective,
) -> Trainer:
    on_cuda = device.type == "cuda"
    world = distributed.world_size()
    memory_format = (
        torch.channels_last if recipe.channels_last and on_cuda else torch.contiguous_format
    )
    net = model.to(device, memory_format=memory_format)
    if recipe.sync_bn and world > 1 and not on_cuda:
        raise UserError(
            "--sync-bn synchronises BatchNorm over GPUs (NCCL); on CPU processes drop it"
        )
    if recipe.sync_bn and world > 1:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    loader = BatchLoader(
        data.train,
        recipe.batch_size,
        device=device,
        mean=data.mean,
        std=data.std,
        num_classes=data.num_classes,
        augment=recipe.augment,
        shuffle=True,
        drop_last=len(data.train.labels) >= recipe.batch_size * world,
        seed=run.seed,
        rank=distributed.rank(),
        world_size=world,
        channels_last=memory_format == torch.channels_last,
    )
    if len(loader) == 0:
        raise UserError(
            f"{len(data.train):,} training images make no full batch of {recipe.batch_size} "
            f"on each of {world} processes; lower --batch-size"
        )
    optimizer = make_optimizer(net, recipe, recipe.lr_at(recipe.batch_size * world))
    scheduler, per_step = make_scheduler(optimizer, recipe, len(loader))
    precision = choose_precision(device, recipe.amp)
    train_model: nn.Module = net
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if on_cuda else None
        )
    if recipe.compile and on_cuda:
        train_model = torch.compile(train_model)
    return Trainer(
        model=train_model,
        net=net,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        per_step=per_step,
        loader=loader,
        recipe=recipe,
        device=device,
        precision=precision,
        scaler=torch.amp.GradScaler(device.type) if precision.scaler else None,
        lookahead=Lookahead(list(net.parameters()), recipe.lookahead_k, recipe.lookahead_alpha)
        if recipe.lookahead_k
        else None,
        ema=EMA(net, recipe.ema_decay) if recipe.ema_decay else None,
    )


def _restore(t: Trainer, state_file: Path | None, identity: dict[str, Any], console) -> State:
    if state_file is None or not state_file.exists():
        raise UserError(f"nothing to resume: {state_file} does not exist; drop --resume")
    saved = load_checkpoint(state_file)
    ts = saved.get("train_state")
    if not isinstance(ts, dict):
        raise UserError(f"{state_file} holds no training state; drop --resume")
    for note in check_same_run(ts.get("identity", {}), identity, state_file):
        console.print(f"note: {note}")
    t.net.load_state_dict(ts["model"])
    t.optimizer.load_state_dict(ts["optimizer"])
    t.scheduler.load_state_dict(ts["scheduler"])
    _continue_with_new_lr(t, ts["identity"]["recipe"])
    if t.scaler and ts.get("scaler"):
        t.scaler.load_state_dict(ts["scaler"])
    if t.lookahead:
        t.lookahead.load_state_dict(ts["lookahead"])
    if t.ema:
        t.ema.load_state_dict(ts["ema"])
    rng = ts["rng_cpu"]
    torch.set_rng_state(rng[distributed.rank()] if isinstance(rng, list) else rng)
    if t.device.type == "cuda" and ts.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ts["rng_cuda"])
    return State(
        epoch=ts["epoch"],
        step=ts["step"],
        history=ts["history"],
        best=ts["best"],
        val_loss_best=ts["val_loss_best"],
        bad_epochs=ts["bad_epochs"],
        elapsed=ts["elapsed"],
        sums=ts["sums"],
    )


def _continue_with_new_lr(t: Trainer, saved_recipe: dict[str, Any]) -> None:
    """A run resumed with another lr (after a divergence) continues its schedule from the new
    peak: every lr the schedule gives is scaled by new peak / old peak."""
    global_batch = t.recipe.batch_size * distributed.world_size()
    old = Recipe.from_dict(saved_recipe).lr_at(global_batch)
    ratio = t.recipe.lr_at(global_batch) / old
    if ratio == 1:
        return
    for group in t.optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    if hasattr(t.scheduler, "base_lrs"):
        t.scheduler.base_lrs = [lr * ratio for lr in t.scheduler.base_lrs]


def _mid_epoch(state: State, epoch: int, step: int, sums: Sums) -> State:
    return State(
        epoch=epoch,
        step=step,
        history=state.history,
        best=state.best,
        val_loss_best=state.val_loss_best,
        bad_epochs=state.bad_epochs,
        elapsed=state.elapsed,
        sums=sums.record(),
    )


def _stats(sums: Sums, seen_before: int, t_epoch: float) -> str:
    rate = (sums.seen - seen_before) * distributed.world_size() / (time.perf_counter() - t_epoch)
    return (
        f"loss {float(sums.loss) / sums.seen:.3f}  "
        f"acc {float(sums.correct) / sums.seen:6.1%}  {rate:,.0f} img/s"
    )


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


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.3f} "
        f"acc {r['train_accuracy']:6.1%}  val loss {r['val_loss']:.3f} "
        f"acc {r['val_accuracy']:6.1%}  {r['images_per_s']:,.0f} img/s  {r['seconds']:.0f}s"
    )


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


def _announce(
    console: Console, t: Trainer, data: Dataset, recipe: Recipe, run: RunSettings, state: State
) -> None:
    """One line with the plan before the first step; one warning when a GPU-sized run starts on
    a CPU (the user may mean it: never an error)."""
    world = distributed.world_size()
    where = f"{t.device}" + (f" x {world} processes" if world > 1 else "")
    start = f", resuming at epoch {state.epoch + 1}" if state.epoch or state.step else ""
    console.print(
        f"training on {len(data.train):,} images (val {len(data.val):,}): {recipe.name} recipe, "
        f"{recipe.epochs} epochs x {len(t.loader)} steps of {recipe.batch_size * world} images, "
        f"peak lr {recipe.lr_at(recipe.batch_size * world):.3g}, {where}, {t.precision.name}"
        + start
    )
    passes = recipe.epochs * len(data.train)
    if t.device.type == "cpu" and passes > CPU_WARN_IMAGE_PASSES:
        console.print(
            f"[yellow]warning:[/] the {recipe.name} recipe ({recipe.epochs} epochs x "
            f"{len(data.train):,} images) is sized for a GPU and will take many hours on this "
            "CPU; --recipe quick trains in minutes"
        )


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
    return TrainingDiverged(
        f"the loss became NaN or infinite in {where}; lower {t.objective.suspects}; {way}"
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
