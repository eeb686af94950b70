"""What every training command does around its work: join the process group (under torchrun),
run the cheap checks on every rank so that a mistake found anywhere ends every rank with the
same one line, then hold the output's lock for the whole run (one writer per output).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from distill import distributed
from distill.device import resolve_device
from distill.errors import UserError
from distill.files import check_output, output_lock, sweep_stale
from distill.resume import last_path
from distill.settings import RunSettings

T = TypeVar("T")


Reads = Sequence[tuple[str, Path]]  # (what a file is to the run, its path): the run's inputs


def check_not_an_input(run: RunSettings, reads: Reads) -> None:
    """The output is none of the files the run reads, not even with --force: the result would
    replace what it is made from."""
    for what, path in reads:
        if run.out is not None and _same_file(run.out, path):
            raise UserError(
                f"--out {run.out} is {what}; choose another path (--force never overwrites an "
                "input)"
            )


def check_run_output(run: RunSettings) -> None:
    """The output can be written, is not overwritten without --force, and an unfinished run
    beside it is neither lost nor silently continued."""
    if run.out is None:
        return
    check_output(run.out, run.force or run.resume)
    state = last_path(run.out)
    if not run.resume and not run.force and state.exists():
        raise UserError(
            f"{state} holds an unfinished run; pass --resume to continue it or --force to "
            "start over"
        )


def _same_file(a: Path, b: Path) -> bool:
    """The same file by any name: a link, a relative path, or a hard link to it."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where the names lead
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


@contextlib.contextmanager
def training_run(
    run: RunSettings, checks: Callable[[], T] = lambda: None, reads: Reads = ()
) -> Iterator[T]:
    """Check everything cheap before any work, on every rank, then lock the output.

    `checks()` returns whatever the command needs next (e.g. the teacher files it read);
    `reads` names the files the run reads, which its output must not be.
    """
    distributed.init(resolve_device(run.device).type)
    with contextlib.ExitStack() as stack:

        def check() -> T:
            check_not_an_input(run, reads)
            result = checks()
            if distributed.is_main():
                check_run_output(run)
                if run.out is not None:
                    sweep_stale(run.out.parent)
                    stack.enter_context(output_lock(run.out))
            return result

        result = distributed.agree(check)
        if run.out is not None:
            distributed.check_shared(run.out.parent)
        yield result
