"""Several processes, one run (SPEC 9): the few helpers that let the loop read like
single-process code, as the torchvision references' `utils.py` does.

`torchrun` (or `--nproc-per-node`, which relaunches under torchrun's elastic launcher) sets
RANK, LOCAL_RANK and WORLD_SIZE; `init()` then joins the process group: NCCL on CUDA, gloo on
CPU, every rank on `cuda:LOCAL_RANK`. Without those variables nothing changes: one process, and
every helper here is a no-op. Only rank 0 writes files or prints (`is_main()`); collectives carry
a timeout so a rank that died or went another way ends the run instead of hanging it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

from distill.errors import UserError

# How long a collective waits for the other ranks. Long enough for rank 0 to write a ResNet34
# snapshot or decode the data set while the others wait at a barrier; short enough that a lost
# rank ends the run in minutes, not hours.
TIMEOUT = dt.timedelta(minutes=int(os.environ.get("DISTILL_DIST_TIMEOUT_MIN", "10")))

T = TypeVar("T")


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return torch_dist.get_world_size() if active() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device_type: str) -> None:
    """Join the process group torchrun describes (no-op for a single process or when joined)."""
    if not launched() or active():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    torch_dist.init_process_group(backend=backend, timeout=TIMEOUT)


def shutdown() -> None:
    if active():
        torch_dist.destroy_process_group()


def barrier() -> None:
    if active():
        torch_dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (gloo takes CPU tensors, NCCL CUDA ones; `t` is either)."""
    if active():
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` concatenated along dim 0, in rank order (equal shapes on every rank)."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    torch_dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag True when it is True on any rank: decisions every rank must take together (stop
    at this step, save a snapshot now) although each rank saw its own signal or clock."""
    if not active():
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    return [v > 0 for v in all_reduce_sum(t).tolist()]  # a host sync, every SYNC_EVERY steps


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (decisions rank 0 makes alone: stages to skip, resume)."""
    if not active():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order (e.g. per-rank RNG states for a snapshot)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def agree(check: Callable[[], T]) -> T:
    """Run `check` on every rank; if it raised a UserError anywhere, raise it everywhere.

    Without this a mistake found on one rank only (an output locked by another run, a file only
    rank 0 can see) would leave the other ranks waiting at their next collective.
    """
    mine: UserError | None = None
    result: Any = None
    try:
        result = check()
    except UserError as e:
        mine = e
    errors = [e for e in gather(None if mine is None else str(mine)) if e is not None]
    if mine is not None:
        raise mine  # the very error, with its type (a failed write says what to do next)
    if errors:
        raise UserError(errors[0])
    return result


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `python -m distill ARGV` as `nproc` processes on this node under torchrun's elastic
    launcher (what `--nproc-per-node N` does, as ultralytics does for `device=0,1,2,3`); return
    the exit code to leave with: 0, the first failed rank's (2 for a user's mistake), or 128 +
    the signal that stopped the launcher (the ranks then saved a resumable state)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The ranks say what went wrong, on one line from rank 0; the launcher's own failure report
    # (a traceback-like summary per rank) would bury it.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.run").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "distill", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for _, f in sorted(e.failures.items())]
        return next((c for c in codes if c > 0), 1)
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0
