"""The one exception type for a user's mistake: the CLI prints its message on one line, exit 2."""


class UserError(Exception):
    """Bad input from the user. The message says what is wrong and how to fix it."""


def exits_on_user_error(fn):
    """Decorator for CLI commands: a UserError becomes one line on stderr and exit code 2."""
    import functools

    import typer

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper
