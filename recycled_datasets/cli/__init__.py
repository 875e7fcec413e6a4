"""The ``srecycle`` command line. Each command lives in its own module of this package.

Start-up stays instant: command modules import only typer and the standard library at module level;
torch and transformers are imported inside the functions that run the work.
"""

from __future__ import annotations

import sys

import click
import typer

from recycled_datasets import __version__
from recycled_datasets.errors import RecycledError

app = typer.Typer(
    name="srecycle",
    help="Selective Reflection-Tuning: recycle instruction data with a teacher, select it per student, publish it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"srecycle {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors (also accepted after the command)."),
) -> None:
    """srecycle: recycle instruction data with a teacher, select it per student, publish it."""


def _register() -> None:
    from recycled_datasets.cli import score

    app.command("score")(score.score)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors end with one line on stderr and exit code 2; ``--debug`` shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="srecycle", standalone_mode=False)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        typer.echo("srecycle: aborted", err=True)
        raise SystemExit(130) from None
    except click.UsageError as exc:
        if debug:
            raise
        hint = f" (see 'srecycle {exc.ctx.info_name if exc.ctx and exc.ctx.parent else ''} --help')".replace("  ", " ")
        typer.echo(f"srecycle: error: {exc.format_message()}{hint}", err=True)
        raise SystemExit(2) from None
    except RecycledError as exc:
        if debug:
            raise
        typer.echo(f"srecycle: error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("srecycle: interrupted; finished work is saved and a rerun continues from it", err=True)
        raise SystemExit(130) from None
