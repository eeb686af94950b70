"""Where a process's time goes, from start to its last write: named phases (imports, data, model
build, each epoch's steps and validation, saves, pipeline stages), recorded only when the
environment variable DISTILL_TIMINGS names a file. `bench/time_split.py` sets it and prints the
split; an ordinary run pays one `if` per phase.

Records are JSON lines appended at exit: {"phase", "start" (Unix seconds), "seconds", "pid"}.
Phases nest; a reader tells the levels apart by their names (see bench/time_split.py).
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "DISTILL_TIMINGS"
_FILE = os.environ.get(ENV)
_records: list[dict] = []  # this process's phases, written once at exit


@contextmanager
def phase(name: str) -> Iterator[None]:
    if not _FILE:
        yield
        return
    start, t0 = time.time(), time.perf_counter()
    try:
        yield
    finally:
        _records.append({"phase": name, "start": start, "seconds": time.perf_counter() - t0})


def mark(name: str) -> None:
    """A point in time (e.g. the first line of `main`, after the imports)."""
    if _FILE:
        _records.append({"phase": name, "start": time.time(), "seconds": 0.0})


def _write() -> None:
    if not _records:
        return
    pid = os.getpid()
    with open(_FILE, "a") as f:  # one append per process: several ranks may share the file
        f.write("".join(json.dumps(r | {"pid": pid}) + "\n" for r in _records))


if _FILE:
    atexit.register(_write)
