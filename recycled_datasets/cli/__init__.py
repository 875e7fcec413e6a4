"""The ``srecycle`` command line. Each command lives in its own module of this package.

Start-up stays instant: command modules import only typer and the standard library at module level;
torch and transformers are imported inside the functions that run the work.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import typer
from typer._click import exceptions as click_exceptions  # typer >= 0.26 vendors click (pyproject's floor)

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
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks for errors (also accepted after the command)."
    ),
) -> None:
    """srecycle: recycle instruction data with a teacher, select it per student, publish it."""


def _logged(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with logging set up first: warnings and errors only, and no progress bars, with ``--quiet``
    (``score`` and ``finetune`` also quiet every process but the first of a torchrun or accelerate launch)."""

    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def run(*args: Any, **kwargs: Any) -> Any:
        from recycled_datasets.progress import set_quiet, setup_logging

        quiet = bool(kwargs.get("quiet"))
        setup_logging(quiet=quiet)
        set_quiet(quiet)
        return command(*args, **kwargs)

    return run


def _register() -> None:
    from recycled_datasets.cli import (
        build,
        demo,
        evaluate,
        finetune,
        generate,
        import_scores,
        judge,
        push,
        reflect,
        score,
        students,
    )

    app.command("demo")(_logged(demo.demo))
    app.command("reflect")(_logged(reflect.reflect))
    app.command("score")(_logged(score.score))
    app.command("select")(_logged(build.select))
    app.command("build")(_logged(build.build))
    app.command("import-reflections")(_logged(build.import_reflections))
    app.command("import-scores")(_logged(import_scores.import_scores))
    app.command("push")(_logged(push.push))
    app.command("push-model")(_logged(push.push_model))
    app.command("finetune")(_logged(finetune.finetune))
    app.command("students")(_logged(students.students))
    app.command("generate")(_logged(generate.generate))
    app.command("judge")(_logged(judge.judge))
    app.command("evaluate")(_logged(evaluate.evaluate))


_register()


def _one_line(message: str) -> str:
    """An error as one line, with every secret masked (servers echo tokens back in error bodies)."""
    from recycled_datasets.secrets import mask

    return mask(" ".join(message.split()))


INTERRUPTED = "srecycle: interrupted; finished work is saved and a rerun continues from it"


class Terminated(SystemExit):
    """SIGTERM, raised where the process is, so every ``finally`` and cleanup on the way out runs (a staging
    folder is removed, a lock released) and the command ends with one line and exit code 143."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors end with one line on stderr and exit code 2; ``--debug`` shows tracebacks.

    An interrupt (Ctrl-C) ends with one line and exit code 130, SIGTERM with one line and 143, so
    ``srecycle build && srecycle push`` stops there.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    command = typer.main.get_command(app)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can signals be handled
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        # Outside standalone mode typer answers Ctrl-C (and any typer.Exit) by returning the exit code.
        code = command.main(args=args, prog_name="srecycle", standalone_mode=False)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        typer.echo("srecycle: aborted", err=True)
        raise SystemExit(130) from None
    except Terminated as exc:
        typer.echo("srecycle: terminated (SIGTERM); finished work is saved and a rerun continues from it", err=True)
        raise SystemExit(exc.code) from None
    except click_exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc))
        raise SystemExit(0) from None
    except click_exceptions.UsageError as exc:
        if debug:
            raise
        where = f"srecycle {exc.ctx.info_name}" if exc.ctx is not None and exc.ctx.parent is not None else "srecycle"
        typer.echo(f"srecycle: error: {exc.format_message()} (see '{where} --help')", err=True)
        raise SystemExit(2) from None
    except (click_exceptions.ClickException, RecycledError) as exc:
        if debug:
            raise
        message = exc.format_message() if isinstance(exc, click_exceptions.ClickException) else str(exc)
        typer.echo(f"srecycle: error: {_one_line(message)}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        raise SystemExit(130) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if code == 130:
        typer.echo(INTERRUPTED, err=True)
    if isinstance(code, int) and code:
        raise SystemExit(code)
