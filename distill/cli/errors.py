"""How the command line reports a user's mistake: one line on stderr, exit code 2, never a
traceback (a UserError from the library, and click's own usage errors alike)."""

from distill.errors import UserError


def leaving() -> None:
    """From here the process only reports and exits: a SIGTERM (a launcher stopping the ranks
    that are left after one failed) arriving now would turn the one error line into a
    traceback of the exception being handled."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def exits_on_user_error(fn):
    """Decorator for CLI commands: a UserError becomes one line on stderr and exit code 2."""
    import functools

    import typer

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            from distill import distributed

            try:
                ranked = distributed.launched()
            except UserError:  # WORLD_SIZE garbage: the error being reported says so
                ranked = False
            if ranked:  # the launcher may stop this rank while it reports
                leaving()
            # Under torchrun: once, naming the rank that found it; exit 2 everywhere.
            prefix = distributed.error_prefix(str(e), getattr(e, "rank", None))
            if prefix is not None:
                typer.echo(f"{prefix}error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def one_line_usage_errors() -> None:
    """Make click's own usage errors (an unknown flag, a value not among the choices, a missing
    argument) one line too, like every other mistake: `error: <what>; see <command> --help`.

    typer prints them through `rich_utils.rich_format_error` (usage, a hint and a panel); this
    replaces that one function. Exit code 2 is click's already.
    """
    import typer
    from typer import rich_utils

    def one_line(e) -> None:
        if e.__class__.__name__ == "NoArgsIsHelpError":  # the help was printed instead
            return
        from distill import distributed

        try:
            others = not distributed.is_main()
        except UserError:  # WORLD_SIZE or RANK garbage: nobody else is listening
            others = False
        if others:  # under torchrun every rank parses: one line, from rank 0
            return
        ctx = getattr(e, "ctx", None)
        see = f"; see {ctx.command_path} --help" if ctx is not None else ""
        message = " ".join(e.format_message().split()).replace("Value error, ", "").rstrip(".")
        typer.echo(f"error: {message}{see}", err=True)

    rich_utils.rich_format_error = one_line
