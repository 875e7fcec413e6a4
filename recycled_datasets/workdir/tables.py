"""Reading and writing the workdir's stage tables: every reader and writer of a stage file goes through here.

Writes are atomic and deterministic (:mod:`recycled_datasets.workdir.files`); reads check the file's digest
and its columns against the stage's schema (none missing, none added, each of its type), so a damaged, foreign
or hand-edited file is a one-line error naming it and the command that makes it again, even when its digest
was recomputed to match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recycled_datasets.chat import reflection_columns
from recycled_datasets.errors import StoreError
from recycled_datasets.records import CONTEXT_COLUMN
from recycled_datasets.workdir.files import (
    atomic_write_bytes,
    read_json,
    read_table,
    write_json,
    write_table,
)
from recycled_datasets.workdir.layout import Workdir
from recycled_datasets.workdir.schema import (
    conform,
    reflections_schema,
    report_bytes,
    scores_schema,
    subset_schema,
)

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa


def as_workdir(workdir: Workdir | Path | str) -> Workdir:
    """``workdir`` as a :class:`Workdir` (a path is wrapped)."""
    return workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))


def write_frame(frame: pl.DataFrame, path: Path, schema: pa.Schema, *, digest: bool = True) -> Path:
    """Write ``frame`` as exactly the columns and types of ``schema``."""
    return write_table(conform(frame.to_arrow(), schema), path, digest=digest)


def checked(table: pa.Table, path: Path, columns: Sequence[str], regenerate: str) -> pa.Table:
    """``table`` if it has ``columns``, else a :class:`StoreError` naming the file and what to run."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise StoreError(
            f"{path} lacks the column(s) {', '.join(missing)}; it was not written by srecycle: rerun `{regenerate}`"
        )
    return table


def _same_kind(found: pa.DataType, expected: pa.DataType) -> bool:
    import pyarrow as pa

    for kind in (
        lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        pa.types.is_integer,
        pa.types.is_floating,
    ):
        if kind(expected):
            return bool(kind(found) or (pa.types.is_null(found)))
    return found.equals(expected)


def conforming(
    table: pa.Table, path: Path, schema: pa.Schema, regenerate: str, *, optional: Sequence[str] = ()
) -> pa.Table:
    """``table`` if it holds exactly the columns of ``schema`` (``optional`` ones may be absent), each of its type;
    else a :class:`StoreError` naming the file, what is wrong and what to run."""
    problems = []
    missing = [n for n in schema.names if n not in table.column_names and n not in optional]
    if missing:
        problems.append(f"lacks the column(s) {', '.join(missing)}")
    extra = [n for n in table.column_names if n not in schema.names]
    if extra:
        problems.append(f"has column(s) srecycle does not write ({', '.join(extra)})")
    wrong = [
        f"{field.name} is {table.schema.field(field.name).type}, not {field.type}"
        for field in schema
        if field.name in table.column_names and not _same_kind(table.schema.field(field.name).type, field.type)
    ]
    if wrong:
        problems.append(f"has columns of the wrong type ({'; '.join(wrong)})")
    if problems:
        raise StoreError(
            f"{path} {' and '.join(problems)}: it was changed since srecycle wrote it; delete it and rerun "
            f"`{regenerate}`"
        )
    return table


def typed_context(table: pa.Table) -> pa.Table:
    """``table`` with a ``context`` column of JSON text (as workdirs were written before it was typed) as turns."""
    import pyarrow as pa

    from recycled_datasets.chat import context_cell, context_of, message_type

    if CONTEXT_COLUMN not in table.column_names or not pa.types.is_string(table.schema.field(CONTEXT_COLUMN).type):
        return table
    cells = [context_cell(context_of(cell)) for cell in table.column(CONTEXT_COLUMN).to_pylist()]
    at = table.column_names.index(CONTEXT_COLUMN)
    return table.set_column(at, CONTEXT_COLUMN, pa.array(cells, type=message_type()))


# ---- reflections --------------------------------------------------------------------------------------------
def has_reflections(workdir: Workdir | Path) -> bool:
    wd = as_workdir(workdir)
    return wd.reflections.is_file() and wd.reflections_meta.is_file()


def read_reflections(workdir: Workdir | Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The workdir's reflections table and its metadata, or a :class:`StoreError` saying what to run."""
    wd = as_workdir(workdir)
    if not has_reflections(wd):
        raise StoreError(
            f"{wd.root} has no reflections yet: run srecycle build --source ... --teacher ... --workdir {wd.root} "
            "(or srecycle import-reflections) first"
        )
    meta = read_json(wd.reflections_meta, wd.command_for(wd.reflections_meta))
    import polars as pl

    frame = pl.from_arrow(read_reflections_table(wd))
    return frame.select(reflection_columns(frame.columns)), meta


def read_reflections_table(workdir: Workdir | Path) -> pa.Table:
    """The wide reflections table as arrow (for the release views)."""
    wd = as_workdir(workdir)
    regenerate = wd.command_for(wd.reflections)
    table = typed_context(read_table(wd.reflections, regenerate))
    schema = reflections_schema(context=True)
    return conforming(table, wd.reflections, schema, regenerate, optional=(CONTEXT_COLUMN,))


def read_reflections_meta(workdir: Workdir | Path) -> dict[str, Any]:
    wd = as_workdir(workdir)
    return read_json(wd.reflections_meta, wd.command_for(wd.reflections_meta))


def write_reflections(workdir: Workdir | Path, frame: pl.DataFrame, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write the workdir's reflections table and its metadata."""
    return write_reflections_file(as_workdir(workdir).reflections, frame, meta)


def write_reflections_file(path: Path, frame: pl.DataFrame, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write a reflections table at ``path`` (``srecycle reflect --output``) and its metadata beside it as
    ``.json`` (table first: the metadata says the table is whole)."""
    write_frame(frame, path, reflections_schema(context=CONTEXT_COLUMN in frame.columns))
    write_json(path.with_suffix(".json"), dict(meta))
    return dict(meta)


# ---- scores -------------------------------------------------------------------------------------------------
def read_scores(workdir: Workdir | Path, key: str) -> pl.DataFrame:
    import polars as pl

    return pl.from_arrow(read_scores_table(workdir, key))


def read_scores_table(workdir: Workdir | Path, key: str) -> pa.Table:
    wd = as_workdir(workdir)
    files = wd.student(key)
    table = read_table(files.scores, wd.command(files.scores.name, key))
    return conforming(table, files.scores, scores_schema(), wd.command(files.scores.name, key))


def read_scores_meta(workdir: Workdir | Path, key: str) -> dict[str, Any] | None:
    """scores.json of ``key``, or None when the student has no scores yet."""
    wd = as_workdir(workdir)
    files = wd.student(key)
    if not (files.scores.is_file() and files.scores_meta.is_file()):
        return None
    return read_json(files.scores_meta, wd.command(files.scores_meta.name, key))


def write_scores(workdir: Workdir | Path, key: str, frame: pl.DataFrame, meta: Mapping[str, Any]) -> Path:
    wd = as_workdir(workdir)
    files = wd.student(key)
    write_frame(frame, files.scores, scores_schema())
    write_json(files.scores_meta, dict(meta))
    return files.scores


# ---- subset and report --------------------------------------------------------------------------------------
def write_subset(workdir: Workdir | Path, key: str, frame: pl.DataFrame, report: Mapping[str, Any]) -> Path:
    """Write a student's subset and its selection report."""
    wd = as_workdir(workdir)
    files = wd.student(key)
    write_frame(frame, files.subset, subset_schema(context=CONTEXT_COLUMN in frame.columns))
    atomic_write_bytes(files.report, report_bytes(report))
    return files.subset


def read_subset_table(workdir: Workdir | Path, key: str) -> pa.Table:
    wd = as_workdir(workdir)
    files = wd.student(key)
    regenerate = wd.command(files.subset.name, key)
    table = typed_context(read_table(files.subset, regenerate))
    return conforming(table, files.subset, subset_schema(context=True), regenerate, optional=(CONTEXT_COLUMN,))


def read_report(workdir: Workdir | Path, key: str) -> dict[str, Any]:
    wd = as_workdir(workdir)
    files = wd.student(key)
    return read_json(files.report, wd.command(files.report.name, key))


def rows_of(reflections: pl.DataFrame, ids: Sequence[str]) -> pl.DataFrame:
    """The reflections of ``ids``, in that order."""
    import polars as pl

    order = pl.DataFrame({"id": list(ids)}, schema={"id": pl.String})
    frame = order.join(reflections, on="id", how="left", maintain_order="left")
    frame = frame.select(reflection_columns(frame.columns))
    lost = frame.filter(pl.col("ori_output").is_null())["id"]
    if lost.len():
        raise StoreError(f"the reflections lack {lost.len()} rows (e.g. {lost[0]}); rebuild them with srecycle build")
    return frame
