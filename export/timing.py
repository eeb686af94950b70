"""Timing discipline for every benchmark here and in bench/: warm-up, then runs in alternating
blocks until each contender has run long enough, and the percentiles of what was measured.

`distill bench` (benchmark.py) and the bench/ scripts all time through `measure`, so their numbers
are taken the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distill.errors import UserError


@dataclass(frozen=True)
class Timing:
    """How long to measure each batch size."""

    warmup: int = 3  # runs per engine before timing (allocations, caches, lazy init)
    min_runs: int = 5  # timed runs per engine, at least
    max_runs: int = 200  # and at most
    min_seconds: float = 2.0  # keep alternating until each engine has run this long
    block_seconds: float = 0.25  # one engine runs this long before the next takes over
    probe_seconds: float = 0.3  # matmul peak probe, per precision

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_runs < 1 or self.max_runs < self.min_runs:
            raise UserError(f"timing {self} needs warmup >= 0 and 1 <= min_runs <= max_runs")
        if min(self.min_seconds, self.block_seconds, self.probe_seconds) < 0:
            raise UserError(f"timing {self}: seconds cannot be negative")


def parse_batch_sizes(text: str) -> list[int]:
    """Parse "1,32,256" into [1, 32, 256]."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 for b in sizes):
        raise UserError(f"batch sizes {text!r} should be positive integers, e.g. 1,32,256")
    return sizes


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}


def measure(
    runners: dict[str, Callable[[], object]], timing: Timing = Timing()
) -> dict[str, list[float]]:
    """Warm up every runner, then time them in alternating blocks; returns seconds per run.

    Blocks, not single runs: engines keep thread pools that stay awake for a while after a run,
    and on a small machine one engine's waking threads would steal the cores the other needs. A
    block of short runs starts with one untimed run that wakes its engine's pool (for runs
    longer than a block, waking is noise next to the run and is skipped). A runner must return
    only when its work is done (CUDA runners synchronise inside).
    """
    wake: dict[str, bool] = {}
    for name, run in runners.items():
        last = 0.0
        for _ in range(timing.warmup):
            start = time.perf_counter()
            run()
            last = time.perf_counter() - start
        wake[name] = last < timing.block_seconds
    times: dict[str, list[float]] = {name: [] for name in runners}
    while True:
        for name, run in runners.items():
            if len(times[name]) >= timing.max_runs:
                continue
            if wake[name]:
                run()
            block_start = time.perf_counter()
            while True:
                start = time.perf_counter()
                run()
                end = time.perf_counter()
                times[name].append(end - start)
                if end - block_start >= timing.block_seconds or len(times[name]) >= timing.max_runs:
                    break
        enough = all(
            len(t) >= timing.min_runs and sum(t) >= timing.min_seconds for t in times.values()
        )
        if enough or all(len(t) >= timing.max_runs for t in times.values()):
            return times
