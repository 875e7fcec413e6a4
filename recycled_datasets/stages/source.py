"""The source stage: the rows of a build, from a public set, the bundled sample, a file, a folder or a Hub id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recycled_datasets.chat import context_of
from recycled_datasets.errors import InputError
from recycled_datasets.records import CONTEXT_COLUMN, SourceRow

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

SAMPLE_NAME = "sample"


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """The rows of a build and what to record about where they came from."""

    rows: list[SourceRow]
    name: str
    license: str
    skipped: int = 0


def sample_path() -> Path:
    """The project's own 30-row sample in Alpaca form (used by the demo and the tests)."""
    from importlib import resources

    return Path(str(resources.files("recycled_datasets").joinpath("data", "sample.jsonl")))


def load_source(source: str, *, limit: int | None = None, skip_invalid: bool = False) -> SourceInfo:
    """Read ``source``: ``alpaca``/``wizardlm`` (the public Hub sets), ``sample``, or a file/folder/Hub id."""
    from recycled_datasets.sources import known_source, license_of, read_source

    known = known_source(source)
    if known is not None and known.public and source == known.name:
        try:
            data = read_source(known.path, skip_invalid=skip_invalid, limit=limit)
        except InputError as e:
            raise InputError(
                f"could not load the public set {known.path} through datasets (no network?): {e}. "
                f"Download it elsewhere and pass the local file of that form with --source PATH"
            ) from e
        return SourceInfo(data.rows, known.path, known.license, len(data.invalid))
    if known is not None and source == SAMPLE_NAME:
        data = read_source(sample_path(), skip_invalid=skip_invalid, limit=limit)
        return SourceInfo(data.rows, known.path, known.license, len(data.invalid))
    data = read_source(source, skip_invalid=skip_invalid, limit=limit)
    return SourceInfo(data.rows, source, license_of(source), len(data.invalid))  # a public set's Hub id: its licence


def rows_from_frame(frame: pl.DataFrame) -> list[SourceRow]:
    """The source rows a reflections table was made from (its ``ori`` variant), in its order."""
    return [
        SourceRow(
            r["id"],
            int(r["source_index"]),
            r["ori_instruction"],
            r["ori_input"],
            r["ori_output"],
            context_of(r.get(CONTEXT_COLUMN)),
        )
        for r in frame.iter_rows(named=True)
    ]
