"""The `distill` command line. Each command is three steps: flags -> settings (distill/flags.py
builds them from the settings dataclasses) -> one library call a user could make from Python too
-> print the result.

- `common`: the app, the `@command` decorator, shared flags, relaunching under torchrun;
- `train_cmds`: teacher train, student, prune;
- `inspect_cmds`: models, budget, eval, report;
- `deploy_cmds`: predict, bench (`export onnx` is export/cli.py's);
- `pipeline_cmd`: pipeline;
- `sweep_cmd`: sweep (a study of trials over a search space).

A user's mistake (a UserError) is one line on stderr and exit code 2; an interruption of a
training command prints the exact command that resumes it.
"""

from __future__ import annotations

import signal
import sys

import typer

from distill import distributed
from distill.cli import (  # noqa: F401
    deploy_cmds,
    inspect_cmds,
    pipeline_cmd,
    sweep_cmd,
    train_cmds,
)
from distill.cli.common import app

__all__ = ["app", "main"]


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that every `finally` (temp files, locks) runs."""


def _terminate(signum, frame):
    raise Terminated


def main() -> None:
    from distill.files import sweep_stale

    signal.signal(signal.SIGTERM, _terminate)
    sweep_stale()  # temp folders of distill processes that were killed with -9
    try:
        app()
    except Terminated:
        typer.echo("terminated: nothing half-written was left behind", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
