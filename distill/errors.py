"""The one exception type for a user's mistake. The command line prints it on one line and exits
2 (distill/cli/errors.py); the Python API raises it as it is."""


class UserError(Exception):
    """Bad input from the user. The message says what is wrong and how to fix it."""
