"""How distill talks: one console per process, quiet on every rank but 0, never wrapped at 80
columns when the output is a file or a pipe (log lines must stay whole for grep and copy-paste).
"""

from __future__ import annotations

import sys

from rich.console import Console

from distill import distributed


def make_console(quiet: bool = False, stderr: bool = False) -> Console:
    """A console that prints on rank 0 only, and nothing at all when `quiet`."""
    return Console(
        stderr=stderr, soft_wrap=True, quiet=quiet or not distributed.is_main(), highlight=False
    )


def note(message: str) -> None:
    """One line on stderr about something the user should know but need not act on."""
    if distributed.is_main():
        print(f"note: {message}", file=sys.stderr, flush=True)
