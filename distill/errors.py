"""The one exception type for a user's mistake. The command line prints it on one line and exits
2 (distill/cli/errors.py); the Python API raises it as it is."""

import os
import re
import unicodedata


class UserError(Exception):
    """Bad input from the user. The message says what is wrong and how to fix it.

    Its text is always one line: a control character in it (a newline or an escape sequence in
    a file name the user gave, a library's coloured message) is shown escaped, so the error
    stays the one line every caller prints and no terminal ever interprets it."""

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(text: str) -> str:
    """`text` with each control character (newlines, tabs, ESC, the Unicode line separators)
    written as its Python escape: what a user typed stays recognisable, and nothing breaks the
    line or drives the terminal."""
    return "".join(_escape(c) if _control(c) else c for c in text)


def _control(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Zl", "Zp")


def _escape(c: str) -> str:
    return c.encode("unicode_escape").decode("ascii")


def control_characters(text: str) -> str:
    """The control characters in `text`, escaped and joined ('\\n\\x1b'), or '' when it has none:
    for the rule that names (class names) are plain one-line text."""
    found = dict.fromkeys(c for c in text if _control(c))
    return "".join(map(_escape, found))


def terminal_safe(text: str) -> str:
    """`text` for a terminal: line breaks and tabs kept, every other control character (ESC,
    carriage return, backspace, bell) escaped, so text from files or users cannot recolour,
    overwrite or clear what is printed around it."""
    return "".join(_escape(c) if _control(c) and c not in "\n\t" else c for c in text)


def first_line(e: BaseException, limit: int | None = 120) -> str:
    """What a library's exception says, as a clause of our one-line message: its first line, or
    its type's name when it says nothing. A line over `limit` characters keeps its whole
    sentences that fit, or its whole words and "...": cut at the limit, MLflow's advice read
    "Please m"."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    if limit is None or len(line) <= limit:
        return line
    cut = line[:limit]
    sentence = cut.rfind(". ")
    if sentence >= limit // 3:
        return cut[: sentence + 1]
    words = cut[: cut.rfind(" ")] if " " in cut else cut
    return words.rstrip(" ,;:(") + "..."


def unreadable_torch_file(e: BaseException, path: str | os.PathLike) -> str:
    """Why `torch.load(path, weights_only=True)` raised `e`, in the user's terms. torch's own
    messages are paragraphs about its defaults, or miniz internals, that tell a user nothing
    about the file they passed."""
    text = str(e)
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        empty = False
    if empty:
        return "the file is empty"
    if isinstance(e, EOFError) or "zip archive" in text or "central directory" in text:
        return "it is cut short or is not a file torch.save wrote"
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds a Python object ({found[1]}) that a safe load refuses to run"
    if isinstance(e, OSError):  # permission denied, an I/O error: about the file, not its bytes
        return first_line(e)
    # Anything else (struct, pickle or zip internals) says the bytes are not torch.save's.
    return "it is damaged or is not a file torch.save wrote"
