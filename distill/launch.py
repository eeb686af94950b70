"""Launching several processes safely: the environment a launcher sets is checked when it is used
(one line per impossible value, never a traceback at import), the cheap checks run before any
rank is spawned, ranks end with their launcher, and a lost peer is one line naming it.

- `env_int` reads WORLD_SIZE, RANK, LOCAL_RANK and DISTILL_DIST_TIMEOUT_MIN: a value that is not
  a whole number in range is a UserError naming the variable and what it should be.
- `check_nproc` runs in the launcher before torchrun starts (and before a sweep starts its
  workers): more processes than GPUs is refused (NCCL cannot share a GPU between ranks), and so
  are more than four per core or more than the memory holds; more threads than cores is a
  warning.
- `watch_parent` runs in every rank: when the launcher dies (even by `kill -9`, which it cannot
  forward) the rank is re-parented; the watchdog then stops it as SIGTERM does (a resumable state
  at the next step), and ends it outright if that does not happen in `GRACE_S`.
- `lost_peer` turns the backend's error about a vanished peer into one line that names the
  rank that went away, from the ranks' pids gathered when the group was joined.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time

from distill.errors import UserError

GRACE_S = 60  # after the launcher died: time to save a resumable state before exiting anyway
POLL_S = 1.0


def env_int(
    name: str, default: int, lo: int, hi: int | None = None, unit: str = "", why: str = ""
) -> int:
    """The environment variable `name` as an int in [lo, hi]; `default` when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value > hi):
        span = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
        raise UserError(f"{name}={raw!r} must be a whole number{unit} {span}{why}; fix or unset it")
    return value


def world_from_env() -> tuple[int, int, int]:
    """(WORLD_SIZE, RANK, LOCAL_RANK) as a launcher set them, checked against each other."""
    world = env_int("WORLD_SIZE", 1, 1, 65536)
    rank = env_int("RANK", 0, 0, world - 1, why=f" (WORLD_SIZE is {world})")
    local = env_int("LOCAL_RANK", 0, 0, world - 1, why=f" (WORLD_SIZE is {world})")
    return world, rank, local


def timeout_minutes() -> int:
    """How long a collective waits for the other ranks (DISTILL_DIST_TIMEOUT_MIN, default 10):
    long enough for rank 0 to write a ResNet34 snapshot or decode the data set while the others
    wait at a barrier; short enough that a lost rank ends the run in minutes, not hours."""
    return env_int("DISTILL_DIST_TIMEOUT_MIN", 10, 1, 24 * 60, unit=" of minutes")


def physical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# What each process holds of its own once torch is imported (about 0.5 GB resident here, much
# of it shared libraries): a lower bound for refusing more processes than the memory can hold.
PROCESS_BYTES = 200 * 2**20


def check_nproc(nproc: int, device: str, warn, workers: int = 1) -> None:
    """Refuse what cannot run and warn about what will crawl, before any process is started:
    `workers` launchers (a sweep's) each start `nproc` processes."""
    import torch

    from distill.memory import require

    timeout_minutes()  # a bad value would otherwise surface in every rank
    cores = physical_cores()
    gpus = torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 0
    if (device == "cuda" or gpus) and nproc > gpus:  # auto uses the GPUs when there are some
        raise UserError(
            f"--nproc-per-node {nproc} asks for one GPU per process but {gpus} are visible; "
            f"pass at most {gpus}"
        )
    processes = workers * nproc
    asked = f"--workers {workers} x --nproc-per-node {nproc}" if workers > 1 else (
        f"--nproc-per-node {nproc}"
    )  # fmt: skip
    if processes > 4 * cores:
        raise UserError(
            f"{asked} would start {processes:,} processes on {cores} cores; start at most "
            f"{cores} (one per core)"
        )
    require(processes * PROCESS_BYTES, f"{asked}: {processes:,} processes", "start fewer")
    threads = env_int("OMP_NUM_THREADS", max(1, cores // processes), 1, unit=" of threads")
    if gpus == 0 and processes * threads > cores:
        warn(
            f"note: {processes} processes x {threads} threads exceed the {cores} cores here; "
            "each process will wait for the others (fewer processes train faster)"
        )


def watch_parent(
    on_lost, grace_s: float = GRACE_S, poll_s: float = POLL_S, pid: int | None = None
) -> threading.Thread:
    """Call `on_lost(pid)` once this process's parent (the launcher) is gone, then, if the process
    is still alive `grace_s` later, exit with 143 (as SIGTERM would have it). `pid`: watch that
    process instead (a sweep's worker under torchrun watches the sweep, its grandparent)."""
    parent = pid or os.getppid()

    def there() -> bool:
        return alive(parent) if pid else os.getppid() == parent

    def watch() -> None:
        while there():
            time.sleep(poll_s)
        on_lost(parent)
        time.sleep(grace_s)
        os._exit(143)

    thread = threading.Thread(target=watch, name="distill-parent-watchdog", daemon=True)
    thread.start()
    return thread


def stop_with_launcher(rank: int) -> None:
    """In a rank: when the launcher dies, stop as SIGTERM stops a run (rank 0 says why)."""

    def lost(pid: int) -> None:
        if rank == 0:
            print(
                f"error: the launcher (pid {pid}) went away; stopping every rank",
                file=sys.stderr,
                flush=True,
            )
        os.kill(os.getpid(), signal.SIGTERM)

    watch_parent(lost)


# ---------------------------------------------------------------------------------------------
# Peers


def whoami() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a killed rank its launcher has not reaped yet is a zombie: gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def gone(peers: list[tuple[str, int]], me: int) -> list[int]:
    """The ranks on this host whose processes no longer exist (other hosts cannot be checked)."""
    host = socket.gethostname()
    return [r for r, (h, pid) in enumerate(peers) if r != me and h == host and not alive(pid)]


def lost_peer(peers: list[tuple[str, int]], me: int, error: BaseException) -> str:
    """One line for a collective that failed because a peer vanished, naming the ranks that are
    gone where this host can tell."""
    text = str(error).strip()
    # gloo and NCCL start with the C++ source location: "[.../pair.cc:534] Connection closed..."
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])[:160] if text else ""
    first = first or type(error).__name__
    missing = gone(peers, me)
    if missing:
        names = ", ".join(f"rank {r} (pid {peers[r][1]})" for r in missing)
        return f"{names} went away; this rank cannot go on without it ({first})"
    return f"lost contact with another rank; it went away or stopped answering ({first})"
