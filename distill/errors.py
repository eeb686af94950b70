"""The one exception type for a user's mistake. The command line prints it on one line and exits
2 (distill/cli/errors.py); the Python API raises it as it is."""


class UserError(Exception):
    """Bad input from the user. The message says what is wrong and how to fix it."""


def first_line(e: BaseException, limit: int | None = 120) -> str:
    """What a library's exception says, as a clause of our one-line message: its first line (at
    most `limit` characters), or its type's name when it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
