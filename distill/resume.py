"""Interrupting and resuming a run: the stop flag Ctrl-C and SIGTERM set, the `.last.pt` state file
beside each output, and the checks that a resumed run is the same run.

A run's state is written atomically at most every `STATE_SAVE_SECONDS` (a snapshot of a ResNet34
with momentum and EMA is ~340 MB: on a fast GPU, one per epoch would cost more than the epoch) and
always when a stop is requested. Order and augmentation are pure functions of (seed, epoch, step),
so a resumed run continues to exactly the weights an uninterrupted one reaches.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.errors import UserError

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
                notes.append(f"resuming with lr {value['lr']:g} instead of {old['lr']:g}")
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
