"""The `distill` command line. Each command is three steps: flags -> settings (distill/flags.py
builds them from the settings dataclasses) -> one library call a user could make from Python too
-> print the result.

- `common`: the app, the `@command` decorator, shared flags, relaunching under torchrun;
- `train_cmds`: teacher train, student, prune;
- `inspect_cmds`: models, budget, eval, report;
- `deploy_cmds`: predict, bench; `show`: how they print their results;
- `export_cmd`: export onnx, a sub-app that `python -m export` runs too;
- `pipeline_cmd`: pipeline;
- `sweep_cmd`: sweep (a study of trials over a search space).

A user's mistake (a UserError) is one line on stderr and exit code 2; an interruption of a
training command prints the exact command that resumes it.
"""

from __future__ import annotations

import signal
import sys
import threading

import typer

from distill import distributed, launch
from distill.cli import (  # noqa: F401
    deploy_cmds,
    inspect_cmds,
    pipeline_cmd,
    sweep_cmd,
    train_cmds,
)
from distill.cli.common import app
from distill.cli.errors import leaving

__all__ = ["app", "main"]


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that every `finally` (temp files, locks) runs."""


def _terminate(signum, frame):
    leaving()  # once: a second SIGTERM must not interrupt the way out
    raise Terminated


def main(command: typer.Typer | None = None, prog_name: str | None = None) -> None:
    """Run `command` (the `distill` app by default, or `python -m export`'s) and leave."""
    try:
        _main(command or app, prog_name)
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    # A rank leaves without C++ static destructors whatever ends it; any process leaves without
    # the interpreter's teardown of torch's modules (0.9 s after every command, torch._dynamo's
    # most of it) once its exit functions have run, unless a thread of its own is still working.
    if distributed.launched() or not _working_threads():
        distributed.exit_now(code or 0)
    else:
        sys.exit(code)


def _working_threads() -> bool:
    """Threads the interpreter's exit would wait for (daemon threads it would not)."""
    me = threading.current_thread()
    return any(not t.daemon for t in threading.enumerate() if t is not me)


def _main(command: typer.Typer, prog_name: str | None) -> None:
    from distill.errors import UserError
    from distill.files import sweep_stale
    from distill.timing import mark

    mark("main")  # everything before this is interpreter start-up and imports

    signal.signal(signal.SIGTERM, _terminate)
    sweep_stale()  # temp folders of distill processes that were killed with -9
    try:
        if distributed.launched():  # a rank: it ends with its launcher, even one killed with -9
            launch.stop_with_launcher(distributed.rank())
        command(prog_name=prog_name)
    except UserError as e:  # the launcher's variables, read before any command ran
        leaving()
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except Terminated:
        lost = distributed.lost_peer_line(None)
        if lost is not None:  # the launcher stopped this rank because another one died
            typer.echo(f"[rank {distributed.rank()}] error: {lost}", err=True)
        else:
            typer.echo("terminated: nothing half-written was left behind", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        leaving()
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        leaving()
        lost = distributed.lost_peer_line(e)
        if lost is None:
            raise
        typer.echo(f"[rank {distributed.rank()}] error: {lost}", err=True)  # not 65 lines of gloo
        sys.exit(1)
    finally:
        leaving()  # nor in the middle of the interpreter's shutdown
        distributed.shutdown()


if __name__ == "__main__":
    main()
