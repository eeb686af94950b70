"""How distill talks: one console per process, quiet on every rank but 0, never wrapped at 80
columns when the output is a file or a pipe (log lines must stay whole for grep and copy-paste).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.text import Text

from distill import distributed
from distill.errors import one_line, terminal_safe

# Tables are laid out to the console's width; rich assumes 80 for a pipe and would squeeze a
# bench table's columns to "onnxr…". A table only takes the width it needs.
PIPE_WIDTH = 240


class SafeConsole(Console):
    """A console that prints every string it is given (arguments, table cells) terminal-safe:
    an escape sequence or a carriage return in a class name, path or metadata field is shown
    escaped instead of recolouring or overwriting the lines around it."""

    def render_str(self, text: str, **kwargs) -> Text:
        return super().render_str(terminal_safe(text), **kwargs)


def make_console(quiet: bool = False, stderr: bool = False) -> Console:
    """A console that prints on rank 0 only, and nothing at all when `quiet`."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    # markup=False: class names, paths and metadata come from files and users, and "[/x]" in one
    # would crash a finished run or vanish as a style; distill's own colours are `styled` Text.
    return SafeConsole(
        stderr=stderr,
        markup=False,
        soft_wrap=True,
        quiet=quiet or not distributed.is_main(),
        highlight=False,
        width=PIPE_WIDTH if piped else None,
    )


def styled(text: str, style: str) -> Text:
    """`text` in `style`, for a console without markup: console.print(styled("saved", "green"),
    path) prints the path as the plain text it is."""
    return Text(text, style=style)


def note(message: str) -> None:
    """One line on stderr about something the user should know but need not act on."""
    if distributed.is_main():
        print(f"note: {one_line(message)}", file=sys.stderr, flush=True)
