"""Interrupting and resuming a run: the stop flag Ctrl-C and SIGTERM set, the `.last.pt` state file
beside each output, and the checks that a resumed run is the same run.

A run's state is written atomically at most every `STATE_SAVE_SECONDS` (a snapshot of a ResNet34
with momentum and EMA is ~340 MB: on a fast GPU, one per epoch would cost more than the epoch) and
always when a stop is requested. Order and augmentation are pure functions of (seed, epoch, step),
so a resumed run continues to exactly the weights an uninterrupted one reaches.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill import distributed
from distill.checkpoint import cpu_state_dict, load_checkpoint
from distill.errors import UserError
from distill.settings import Recipe

if TYPE_CHECKING:
    from distill.train_setup import Sums, Trainer

STATE_SAVE_SECONDS = 60.0


def last_path(out: Path) -> Path:
    """The resumable state file kept beside a run's output: s.pt -> s.last.pt."""
    return out.with_name(out.stem + ".last.pt")


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the resumable state has been saved to `path` (None: nothing saved)."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(f"interrupted; state saved to {path}")
        self.path = path


class StopFlag:
    """Turns the first Ctrl-C / SIGTERM into a request to stop at the next step boundary; a second
    one stops at once."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
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


# Recipe fields a resumed run may change: a run that diverged late continues from its last good
# state with a lower learning rate instead of starting over.
RESUMABLE_CHANGES = ("lr", "lr_batch")


def check_same_run(saved: dict[str, Any], current: dict[str, Any], state_file: Path) -> list[str]:
    """Refuse to resume a run with other settings; return the notes on allowed changes.

    `saved`/`current`: the identity of a run (architecture, recipe, data, seed, world size, plus
    whatever the caller adds: teachers, KD settings, the pruned source).
    """
    notes = []
    mismatches = []
    for key, value in current.items():
        old = saved.get(key)
        if key == "recipe" and isinstance(old, dict):
            changed = {k for k in set(old) | set(value) if old.get(k) != value.get(k)}
            if changed and changed <= set(RESUMABLE_CHANGES):
                world = int(current.get("world_size") or 1)
                new_peak = Recipe.from_dict(value).peak_lr(world)
                old_peak = Recipe.from_dict(old).peak_lr(world)
                way = "lowering" if new_peak < old_peak else "raising"
                notes.append(f"{way} the peak lr from {old_peak:.3g} to {new_peak:.3g}")
                continue
        if key == "world_size" and old != value:
            raise UserError(
                f"cannot resume: {state_file} was saved by {old} processes and this run has "
                f"{value}; resume with {old} (torchrun --nproc_per_node {old} ... or "
                f"--nproc-per-node {old})"
            )
        if old != value:
            mismatches.append(key)
    if mismatches:
        raise UserError(
            f"cannot resume: {state_file} holds a run with a different {', '.join(mismatches)}; "
            "rerun with the same settings, or drop --resume and pass --force to start over"
        )
    return notes


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


def restore(t: Trainer, state_file: Path | None, identity: dict[str, Any], console) -> State:
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
    continue_with_new_lr(t, ts["identity"]["recipe"])
    if t.scaler and ts.get("scaler"):
        t.scaler.load_state_dict(ts["scaler"])
    if t.lookahead:
        t.lookahead.load_state_dict(ts["lookahead"])
    if t.ema:
        t.ema.load_state_dict(ts["ema"])
    if isinstance(t.objective, nn.Module):
        t.objective.load_state_dict(ts["objective"])
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


def continue_with_new_lr(t: Trainer, saved_recipe: dict[str, Any]) -> None:
    """A run resumed with another lr (after a divergence) continues its schedule from the new
    peak: every lr the schedule gives is scaled by new peak / old peak."""
    world = distributed.world_size()
    ratio = t.recipe.peak_lr(world) / Recipe.from_dict(saved_recipe).peak_lr(world)
    if ratio == 1:
        return
    for group in t.optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    if hasattr(t.scheduler, "base_lrs"):
        t.scheduler.base_lrs = [lr * ratio for lr in t.scheduler.base_lrs]


def mid_epoch(state: State, epoch: int, step: int, sums: Sums) -> State:
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


def training_state(t: Trainer, st: State, elapsed: float, identity: dict[str, Any]) -> dict:
    """The `train_state` of a `.last.pt`: weights, optimizer, schedule, scaler, Lookahead, EMA,
    every rank's RNG state and where the run is. Every rank must call it (the RNG gather)."""
    return {
        "model": cpu_state_dict(t.net),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler else None,
        "lookahead": t.lookahead.state_dict() if t.lookahead else None,
        "ema": t.ema.state_dict() if t.ema else None,
        # A distillation method's connectors, heads and memory bank (never in the model).
        "objective": _objective_state(t.objective),
        "rng_cpu": distributed.gather(torch.get_rng_state()),
        "rng_cuda": torch.cuda.get_rng_state() if t.device.type == "cuda" else None,
        "epoch": st.epoch,
        "step": st.step,
        "history": st.history,
        "best": st.best,
        "val_loss_best": st.val_loss_best,
        "bad_epochs": st.bad_epochs,
        "elapsed": elapsed,
        "sums": st.sums,
        "identity": identity,
    }


def _objective_state(objective: object) -> dict[str, Any] | None:
    """A distillation method's state on the CPU: tensors copied, extra state (the negatives'
    generator) as it is."""
    if not isinstance(objective, nn.Module):
        return None
    return {
        k: v.detach().to("cpu").clone() if isinstance(v, torch.Tensor) else v
        for k, v in objective.state_dict().items()
    }
