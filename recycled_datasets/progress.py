"""Progress bars and logging for long steps: rich when attached to a terminal, silent with ``--quiet``.

Library code never prints: it logs through ``logging.getLogger(__name__)`` and reports work through a
:class:`rich.progress.Progress` obtained here, which is disabled when output is not a terminal or the user
asked for quiet.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_QUIET_ENV = "SRECYCLE_QUIET"


def console() -> Console:
    """The console the CLI writes its tables to (stdout)."""
    return Console(soft_wrap=True)


def set_quiet(quiet: bool) -> None:
    """Record the user's ``--quiet`` for every progress bar of this process (and its children)."""
    if quiet:
        os.environ[_QUIET_ENV] = "1"
    else:
        os.environ.pop(_QUIET_ENV, None)


def progress_enabled() -> bool:
    return os.environ.get(_QUIET_ENV) != "1" and sys.stderr.isatty()


@contextmanager
def progress(*extra_columns: TextColumn) -> Iterator[Progress]:
    """A progress display with bar, count, rate columns given by the caller, elapsed time and ETA."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), disable=not progress_enabled(), transient=False) as bar:
        yield bar


def setup_logging(*, quiet: bool = False, debug: bool = False) -> None:
    """Configure the root logger once for the CLI: warnings only with ``--quiet``, debug with ``--debug``."""
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    from recycled_datasets.secrets import MaskSecrets

    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=Console(stderr=True), show_path=debug, show_time=False, rich_tracebacks=debug)
    else:  # a log file of a batch job: one line per record, never wrapped at a terminal's width
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(MaskSecrets())
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    for noisy in (
        "httpx",
        "httpcore",
        "httpx2",
        "httpcore2",
        "urllib3",
        "filelock",
        "fsspec",
        "datasets",
        "huggingface_hub",
        "aiohttp",
    ):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
