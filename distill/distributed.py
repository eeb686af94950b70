"""Several processes, one run (SPEC 9): the few helpers that let the loop read like
single-process code, as the torchvision references' `utils.py` does.

`torchrun` (or `--nproc-per-node`, which relaunches under torchrun's elastic launcher) sets
RANK, LOCAL_RANK and WORLD_SIZE; `init()` then joins the process group: NCCL on CUDA, gloo on
CPU, every rank on `cuda:LOCAL_RANK`. Without those variables nothing changes: one process, and
every helper here is a no-op. Only rank 0 writes files or prints (`is_main()`); collectives carry
a timeout so a rank that died or went another way ends the run instead of hanging it. A mistake
found on any rank is printed once, naming the rank (`error_prefix`); the launcher's variables are
checked when they are read (distill/launch.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from distill import launch
from distill.errors import UserError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
ERROR_KEY = "distill/error/"  # + rank: the mistake a rank is about to print (see error_prefix)
_peers: list[tuple[str, int]] = []  # (host, pid) of every rank, gathered when the group is joined


def timeout() -> dt.timedelta:
    """How long a collective waits for the other ranks (launch.timeout_minutes says why)."""
    return dt.timedelta(minutes=launch.timeout_minutes())


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return launch.world_from_env()[0] > 1


def _dist():
    """torch.distributed, imported on first use: `distill --help` and `--version` never load
    torch, and no process group can exist before torch was imported."""
    import torch.distributed

    return torch.distributed


def active() -> bool:
    if "torch.distributed" not in sys.modules:
        return False
    return _dist().is_available() and _dist().is_initialized()


def rank() -> int:
    return _dist().get_rank() if active() else launch.world_from_env()[1]


def world_size() -> int:
    return _dist().get_world_size() if active() else launch.world_from_env()[0]


def local_rank() -> int:
    return launch.world_from_env()[2]


def is_main() -> bool:
    return rank() == 0


def init(device_type: str) -> None:
    """Join the process group torchrun describes (no-op for a single process or when joined)."""
    if not launched() or active():
        return
    import torch

    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    _dist().init_process_group(backend=backend, timeout=timeout())
    _peers[:] = gather(launch.whoami())  # to name a rank that goes away (launch.lost_peer)
    _share_compile_threads()


def _share_compile_threads() -> None:
    # Inductor starts a pool of compile workers per process sized to the whole machine: with a
    # rank per GPU that is ranks x cores workers fighting over the cores during compilation.
    try:
        from torch._inductor import config
    except ImportError:
        return
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or world_size()
    share = max(1, launch.physical_cores() // per_node)
    config.compile_threads = min(config.compile_threads, share)


def shutdown() -> None:
    if active():
        _dist().destroy_process_group()


def exit_now(code: int) -> NoReturn:
    """Leave with `code` after Python's own exit functions (atexit: temp folders, logging,
    multiprocessing, the timing records), skipping the interpreter's teardown and C++ static
    destructors. A process that took part in torch.distributed (a rank, or the launcher's
    parent) must: the rendezvous store's and gloo's threads can still be joinable then, and
    their destructors abort ("terminate called without an active exception", a second line
    after the one error line, and a lost exit code), depending on which process ends first.
    Any other process gains the teardown's time, about 0.9 s once torch._dynamo is loaded."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A reader that went away (| head), or a closed stream: nothing more can be said.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def lost_peer_line(error: BaseException | None) -> str | None:
    """One line naming the rank that went away when `error` is a collective that failed because a
    peer vanished, or (`error` None: this rank was told to stop) when a peer on this host is gone;
    None otherwise."""
    if not _peers:
        return None
    if error is None:
        if not launch.gone(_peers, rank()):
            return None
        return launch.lost_peer(_peers, rank(), RuntimeError("the launcher stopped this rank"))
    if not isinstance(error, (RuntimeError, _dist().DistError)):
        return None
    text = str(error)
    signs = ("Connection closed by peer", "Connection reset", "Broken pipe", "NCCL", "Gloo",
             "gloo", "timed out", "Timed out", "socket", "DistNetworkError")  # fmt: skip
    if not isinstance(error, _dist().DistError) and not any(s in text for s in signs):
        return None
    return launch.lost_peer(_peers, rank(), error)


def error_prefix(message: str, origin: int | None) -> str | None:
    """How this rank prints the mistake `message`: "" (no prefix), "[rank N] ", or None when
    another rank prints it.

    `origin`: the rank `agree` received it from (every rank holds it then: rank 0 prints it,
    naming its origin). A mistake of this rank's own is printed by rank 0 as it is, and by
    another rank with its rank, unless rank 0 reports the very same one (every rank found it):
    the ranks compare through the process group's store, waiting a few seconds at most.
    Without a process group every rank parsed the same command line: rank 0 speaks for all.
    """
    try:
        me = rank()
    except UserError:  # the launcher's own variables are the mistake being printed
        return ""
    if origin is not None:
        return None if me != 0 else ("" if origin == 0 else f"[rank {origin}] ")
    if not active():
        return "" if me == 0 else None
    store = _store()
    if me == 0:
        with contextlib.suppress(Exception):  # a store that is gone: nobody is waiting on it
            if store is not None:
                store.set(ERROR_KEY + "0", message)
        return ""
    if store is not None:
        try:
            store.wait([ERROR_KEY + "0"], dt.timedelta(seconds=3))
            if store.get(ERROR_KEY + "0").decode(errors="replace") == message:
                return None
        except Exception:  # rank 0 is elsewhere (or gone): this rank's line is the only one
            pass
    return f"[rank {me}] "


def _store() -> Any:
    try:
        return _dist().distributed_c10d._get_default_store()
    except Exception:
        return None


def barrier() -> None:
    if active():
        _dist().barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (gloo takes CPU tensors, NCCL CUDA ones; `t` is either)."""
    if active():
        _dist().all_reduce(t, op=_dist().ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` concatenated along dim 0, in rank order (equal shapes on every rank)."""
    if not active():
        return t
    import torch

    parts = [torch.empty_like(t) for _ in range(world_size())]
    _dist().all_gather(parts, t.contiguous())
    return torch.cat(parts)


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag True when it is True on any rank: decisions every rank must take together (stop
    at this step, save a snapshot now) although each rank saw its own signal or clock."""
    if not active():
        return list(flags)
    import torch

    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    return [v > 0 for v in all_reduce_sum(t).tolist()]  # a host sync, every SYNC_EVERY steps


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (decisions rank 0 makes alone: stages to skip, resume)."""
    if not active():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order (e.g. per-rank RNG states for a snapshot)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
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
    if not active():
        if mine is not None:
            raise mine
        return result
    said = gather(None if mine is None else str(mine))
    errors = [(r, e) for r, e in enumerate(said) if e is not None]
    if errors:
        # Printed once, by rank 0, naming the first rank that found it (exits_on_user_error).
        origin, message = errors[0]
        error = mine if mine is not None and str(mine) == message else UserError(message)
        error.rank = origin  # type: ignore[attr-defined]
        raise error  # this rank's very error where it had it (a failed write says what next)
    return result


def check_shared(folder: Path) -> None:
    """Every rank sees `folder` as rank 0 does: rank 0 writes a token there, every rank reads it.
    Ranks on several nodes write one run folder (rank 0 writes, all read checkpoints and the
    data cache), so it must be on a filesystem they share; one that is not is refused in one
    line before any work, instead of ranks diverging on files only rank 0 has."""
    from distill.files import temp_beside

    if not active():
        return
    folder = Path(folder)
    with contextlib.ExitStack() as stack:
        token, problem = ("", ""), None
        if is_main():
            path = stack.enter_context(temp_beside(folder / "shared-check"))
            token = (path.name, os.urandom(8).hex())
            try:
                path.write_text(token[1])
            except OSError as e:  # said on every rank below, not a hang at the broadcast
                problem = f"cannot write in {folder} ({e.strerror}); choose a writable --out"
        name, secret = broadcast(token)

        def check() -> None:
            if problem is not None:
                raise UserError(problem)
            try:
                seen = (folder / name).read_text()
            except OSError:
                seen = None
            if seen != secret:
                raise UserError(
                    f"{folder} is not the same folder on rank {rank()} (host "
                    f"{launch.whoami()[0]}) as on rank 0: runs over several nodes need the run "
                    "folder on a filesystem every node shares; put --out there"
                )

        agree(check)


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
