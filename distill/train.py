"""The training loop shared by teachers, students and pruning recovery.

`fit` trains any model on a `Dataset` with a `Recipe` and an objective (cross-entropy, or a
distillation objective from `distill.losses`). It validates every epoch, keeps the best weights,
and writes a self-describing checkpoint. Beside the output it keeps `<stem>.last.pt`: the last
weights plus the full training state, written atomically, so `resume=True` continues exactly where
a run stopped (Ctrl-C and SIGTERM are caught and saved at the next step boundary).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from distill.budget import count_macs, count_params
from distill.checkpoint import (
    atomic_save,
    cpu_state_dict,
    load_checkpoint,
    new_checkpoint,
    save_checkpoint,
    unwrapped,
)
from distill.data import BatchLoader, Dataset, Split
from distill.errors import UserError
from distill.optim import EMA, Lookahead, make_optimizer, make_scheduler
from distill.recipes import Recipe

STATE_SAVE_SECONDS = 60.0  # write the resumable state at most this often (plus at epoch ends)
SYNC_EVERY = 20  # steps between host syncs for progress and the NaN check


class Objective(Protocol):
    """(student logits, targets, the augmented batch, progress in epochs) -> loss."""

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor, progress: float
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class CrossEntropy:
    label_smoothing: float = 0.0

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor, progress: float
    ) -> torch.Tensor:
        # Works for hard labels and for Mixup/CutMix soft targets alike; float32 for stability.
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)


@dataclass(frozen=True)
class RunConfig:
    """Where and how a training run happens (what it learns is the Recipe)."""

    kind: str  # teacher | student | pruned
    arch: str
    out: Path | None  # None: train in memory only (pruning steps)
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    force: bool = False
    show_progress: bool = True


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the resumable state has been saved to `path`."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(f"interrupted; resume with --resume (state in {path})")
        self.path = path


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    per_class: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "count": self.count,
        }


@dataclass
class _Running:
    """Sums over the current epoch, kept on the device to avoid per-step host syncs."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def last_path(out: Path) -> Path:
    """The resumable last-state file kept beside a run's output."""
    return out.with_name(out.stem + ".last.pt")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX: oneDNN runs bf16 convolutions natively (about 1.3x fp32 on a 2-core
    Zen 4 for resnet18-quarter training); elsewhere bf16 on CPU is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and on CPUs with native bf16 (no loss scaling needed: bf16 has
    fp32's range); plain fp32 otherwise. Weights, optimizer state and losses stay fp32."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    return targets if targets.ndim == 1 else targets.argmax(1)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    split: Split,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    device: torch.device,
    batch_size: int = 1000,
    amp: bool = True,
    channels_last: bool = False,
) -> EvalResult:
    """Top-1, loss, per-class accuracy and confusion matrix on a split, in eval mode."""
    was_training = model.training
    model.eval()
    loader = BatchLoader(
        split,
        batch_size,
        device=device,
        mean=mean,
        std=std,
        num_classes=num_classes,
        channels_last=channels_last,
    )
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    for x, y in loader.epoch(0):
        with autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2)
    model.train(was_training)
    conf = confusion.view(num_classes, num_classes).cpu()  # the one sync point
    n = int(conf.sum())
    per_class = (conf.diag().double() / conf.sum(1).clamp(min=1)).tolist()
    return EvalResult(
        loss=float(loss_sum) / max(n, 1),
        accuracy=float(conf.diag().sum()) / max(n, 1),
        per_class=per_class,
        confusion=conf.tolist(),
        count=n,
    )


def evaluate_split(
    model: nn.Module, data: Dataset, split: Split, device: torch.device, recipe: Recipe
) -> EvalResult:
    """`evaluate` on one of `data`'s splits with its normalisation, under the recipe's precision
    and memory format (the settings the model trains with)."""
    return evaluate(
        model,
        split,
        mean=data.mean,
        std=data.std,
        num_classes=data.num_classes,
        device=device,
        amp=recipe.amp,
        channels_last=recipe.channels_last,
    )


class _StopFlag:
    """Turns the first Ctrl-C / SIGTERM into a request to stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.requested:  # a second Ctrl-C means now
                raise KeyboardInterrupt
            self.requested = True

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=True,
    )


def _check_resume_state(
    saved: dict[str, Any], config: dict[str, Any], run: RunConfig, recipe: Recipe, data: Dataset
) -> None:
    mismatches = [
        what
        for what, a, b in (
            ("architecture", config, saved["expected_config"]),
            ("recipe", saved["recipe"], recipe.to_dict()),
            ("data", saved["data_key"], _data_key(data)),
            ("seed", saved["seed"], run.seed),
        )
        if a != b
    ]
    if mismatches:
        raise UserError(
            f"cannot resume: the saved run used a different {', '.join(mismatches)}; "
            "rerun with the same settings, or drop --resume and pass --force to start over"
        )


def _data_key(data: Dataset) -> dict[str, Any]:
    keys = ("source_id", "split_seed", "train_size", "val_size")
    return {k: data.info.get(k) for k in keys}


def run_checkpoint(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    run: RunConfig,
    history: list[dict[str, Any]],
    meta: dict[str, Any] | None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint of a training run: the model, what it learned from and how."""
    return new_checkpoint(
        kind=run.kind,
        arch=run.arch,
        model=model,
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


def fit(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    run: RunConfig,
    *,
    objective: Objective | None = None,
    meta: dict[str, Any] | None = None,
    console: Console | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train `model`, validate each epoch, return (and write to `run.out`) the best checkpoint.

    `meta` adds checkpoint fields (teachers, kd, pruning). `stop_after_steps` simulates a Ctrl-C
    after that many optimizer steps (for tests of resume).
    """
    console = console or Console(stderr=True)
    device = resolve_device(run.device)
    objective = objective or CrossEntropy(recipe.label_smoothing)
    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    expected_config = unwrapped(model).channel_plan().to_dict()

    loader = BatchLoader(
        data.train,
        recipe.batch_size,
        device=device,
        mean=data.mean,
        std=data.std,
        num_classes=data.num_classes,
        augment=recipe.augment,
        shuffle=True,
        drop_last=len(data.train.labels) > recipe.batch_size,
        seed=run.seed,
        channels_last=recipe.channels_last,
    )
    steps_per_epoch = len(loader)
    optimizer = make_optimizer(model, recipe)
    scheduler, per_step = make_scheduler(optimizer, recipe, steps_per_epoch)
    lookahead = (
        Lookahead(list(model.parameters()), recipe.lookahead_k, recipe.lookahead_alpha)
        if recipe.lookahead_k
        else None
    )
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay else None
    train_model = torch.compile(model) if (recipe.compile and on_cuda) else model

    start_epoch, start_step = 0, 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"accuracy": -1.0, "state": None, "epoch": -1}
    val_loss_best, bad_epochs, elapsed_before = math.inf, 0, 0.0
    running_saved: dict[str, Any] | None = None
    state_file = last_path(run.out) if run.out else None

    if run.resume:
        if state_file is None or not state_file.exists():
            raise UserError(f"nothing to resume: {state_file} does not exist; drop --resume")
        state = load_checkpoint(state_file)
        if "train_state" not in state:
            raise UserError(f"{state_file} holds no training state; drop --resume")
        _check_resume_state(state["train_state"], expected_config, run, recipe, data)
        ts = state["train_state"]
        unwrapped(model).load_state_dict(ts["model"])
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        if lookahead:
            lookahead.load_state_dict(ts["lookahead"])
        if ema:
            ema.load_state_dict(ts["ema"])
        torch.set_rng_state(ts["rng_cpu"])
        if on_cuda and ts.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ts["rng_cuda"])
        start_epoch, start_step = ts["epoch"], ts["step"]
        history, best = ts["history"], ts["best"]
        val_loss_best, bad_epochs = ts["val_loss_best"], ts["bad_epochs"]
        elapsed_before, running_saved = ts["elapsed"], ts["running"]
    elif state_file is not None and state_file.exists() and not run.force:
        raise UserError(
            f"{state_file} holds an unfinished run; pass --resume to continue it "
            "or --force to start over"
        )

    def snapshot(epoch: int, step: int, running: _Running) -> dict[str, Any]:
        """Everything needed to continue at (epoch, step) exactly."""
        return run_checkpoint(model, data, recipe, run, history, meta) | {
            "train_state": {
                "model": cpu_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "lookahead": lookahead.state_dict() if lookahead else None,
                "ema": ema.state_dict() if ema else None,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state() if on_cuda else None,
                "epoch": epoch,
                "step": step,
                "history": history,
                "best": best,
                "val_loss_best": val_loss_best,
                "bad_epochs": bad_epochs,
                "elapsed": elapsed_before + (time.perf_counter() - t_start),
                "running": {
                    "loss": float(running.loss),
                    "correct": int(running.correct),
                    "seen": running.seen,
                },
                "expected_config": expected_config,
                "recipe": recipe.to_dict(),
                "data_key": _data_key(data),
                "seed": run.seed,
            }
        }

    def save_state(epoch: int, step: int, running: _Running) -> None:
        if state_file is not None:
            atomic_save(snapshot(epoch, step, running), state_file)

    stop = _StopFlag()
    t_start = time.perf_counter()
    last_state_save = t_start
    global_step = start_epoch * steps_per_epoch + start_step
    eval_model = ema.module if ema else model
    with stop.installed(), _progress(console, run.show_progress) as progress:
        task = progress.add_task(
            "training",
            total=recipe.epochs * steps_per_epoch,
            completed=global_step,
            stats="",
        )
        for epoch in range(start_epoch, recipe.epochs):
            model.train()
            running = _Running(
                loss=torch.zeros((), device=device, dtype=torch.float64),
                correct=torch.zeros((), device=device, dtype=torch.long),
            )
            if running_saved is not None:  # resuming mid-epoch: keep the epoch's sums whole
                running.loss += running_saved["loss"]
                running.correct += running_saved["correct"]
                running.seen = running_saved["seen"]
                running_saved = None
            first = start_step if epoch == start_epoch else 0
            progress.update(task, description=f"epoch {epoch + 1}/{recipe.epochs}")
            t_epoch, seen_at_start = time.perf_counter(), running.seen
            for step, (x, y) in enumerate(loader.epoch(epoch, first), start=first):
                with autocast(device, recipe.amp):
                    logits = train_model(x)
                    loss = objective(logits, y, x, epoch + step / steps_per_epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                if lookahead:
                    lookahead.after_step()
                if ema:
                    ema.update(model)
                if per_step:
                    scheduler.step()
                running.loss += loss.detach().double() * len(y)
                running.correct += (logits.argmax(1) == hard_labels(y)).sum()
                running.seen += len(y)
                global_step += 1
                progress.advance(task)
                last = step + 1 == steps_per_epoch
                if global_step % SYNC_EVERY == 0 or last:
                    mean_loss = float(running.loss) / running.seen  # host sync point
                    if not math.isfinite(mean_loss):
                        raise TrainingDiverged(
                            f"the loss became {mean_loss} in epoch {epoch + 1} (step {step + 1}); "
                            f"lower --lr or use another --recipe; the last good state is kept in "
                            f"{state_file}"
                        )
                    rate = (running.seen - seen_at_start) / (time.perf_counter() - t_epoch)
                    progress.update(
                        task,
                        stats=f"loss {mean_loss:.3f}  "
                        f"acc {float(running.correct) / running.seen:6.1%}  {rate:,.0f} img/s",
                    )
                    if time.perf_counter() - last_state_save > STATE_SAVE_SECONDS and not last:
                        save_state(epoch, step + 1, running)
                        last_state_save = time.perf_counter()
                if stop.requested or (
                    stop_after_steps is not None and global_step >= stop_after_steps
                ):
                    save_state(epoch, step + 1, running)
                    raise TrainingInterrupted(state_file)

            seconds = time.perf_counter() - t_epoch
            val = evaluate_split(eval_model, data, data.val, device, recipe)
            record = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": float(running.loss) / max(running.seen, 1),
                "train_accuracy": float(running.correct) / max(running.seen, 1),
                "val_loss": val.loss,
                "val_accuracy": val.accuracy,
                "seconds": seconds,
                "images_per_s": (running.seen - seen_at_start) / max(seconds, 1e-9),
            }
            history.append(record)
            progress.console.print(
                f"epoch {epoch + 1:>3}/{recipe.epochs}  train loss {record['train_loss']:.3f} "
                f"acc {record['train_accuracy']:6.1%}  val loss {val.loss:.3f} "
                f"acc {val.accuracy:6.1%}  {record['images_per_s']:,.0f} img/s  {seconds:.0f}s"
            )
            if not per_step:
                scheduler.step(val.loss)
            if val.accuracy > best["accuracy"]:
                best = {
                    "accuracy": val.accuracy,
                    "state": cpu_state_dict(eval_model),
                    "epoch": epoch + 1,
                }
            if val.loss < val_loss_best:
                val_loss_best, bad_epochs = val.loss, 0
            else:
                bad_epochs += 1
            done = epoch + 1 == recipe.epochs
            early = recipe.early_stop_patience and bad_epochs >= recipe.early_stop_patience
            save_state(epoch + 1, 0, _Running(torch.zeros(()), torch.zeros((), dtype=torch.long)))
            last_state_save = time.perf_counter()
            if early and not done:
                progress.console.print(
                    f"early stop: val loss has not improved for {bad_epochs} epochs"
                )
                break

    return _finish(model, best, data, recipe, run, history, meta, device, t_start, elapsed_before)


def _finish(
    model: nn.Module,
    best: dict[str, Any],
    data: Dataset,
    recipe: Recipe,
    run: RunConfig,
    history: list[dict[str, Any]],
    meta: dict[str, Any] | None,
    device: torch.device,
    t_start: float,
    elapsed_before: float,
) -> dict[str, Any]:
    """Load the best weights into `model`, measure it, write and return the final checkpoint."""
    net = unwrapped(model)
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    metrics: dict[str, Any] = {
        "val_accuracy": best["accuracy"],
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "params": count_params(net),
        "macs": count_macs(net, tuple(data.input_size)),
        "train_seconds": elapsed_before + (time.perf_counter() - t_start),
        "device": str(device),
    }
    if data.test is not None:
        test = evaluate_split(net, data, data.test, device, recipe)
        metrics["test_accuracy"] = test.accuracy
    ckpt = run_checkpoint(net, data, recipe, run, history, meta, metrics)
    if run.out is not None:
        save_checkpoint(ckpt, run.out)
    return ckpt
