"""One pyarrow schema per table of the workdir and of the release; ``datasets`` Features derive from them.

Stage tables (in the workdir):

- ``reflections``: one row per source row, the four variants side by side (wide), with each reflected
  variant's status (``ok``, ``fell_back``, ``failed``) and detail (null when ok, else which field fell back
  and why). Chat rows add ``context``: their earlier turns, a list of role/content structs like ``messages``,
  null where a row has none (docs/method.md, section 7).
- ``scores``: one row per (row id, variant) with the student's losses, IFD and r-IFD.
- ``subset``: the rows a student's selection kept: the training fields, then provenance.

Release tables (what ``load_dataset(repo, config)`` returns) add the row as chat turns (``messages``,
``prompt``, ``completion``) after ``output``; the ``reflections`` config is the long view (one row per
variant) and the ``scores`` config every variant's scores for each student.

The report (``report.json``) is JSON; :func:`report_bytes` is its one byte layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from recycled_datasets.records import CHAT_COLUMNS, CONTEXT_COLUMN, REFLECTION_COLUMNS, SCORE_COLUMNS, SUBSET_COLUMNS

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

TEXT_FIELDS = ("instruction", "input", "output")
REFLECTIONS_LONG_COLUMNS = ("id", "source_index", "variant", *TEXT_FIELDS, "status", "detail")
SCORE_TABLE_COLUMNS = ("id", "variant", *SCORE_COLUMNS)
RELEASE_SCORES_COLUMNS = ("student", "id", "variant", *TEXT_FIELDS, *SCORE_COLUMNS)


def _types() -> dict[str, pa.DataType]:
    """The columns that are not strings, across every table."""
    import pyarrow as pa

    types: dict[str, pa.DataType] = {"source_index": pa.int64(), "ifd": pa.float64(), "rifd": pa.float64()}
    types |= {c: pa.int64() for c in SCORE_COLUMNS if c.startswith("n_")}
    types |= {c: pa.float64() for c in SCORE_COLUMNS if c.startswith("loss_")}
    return types


def arrow_schema(columns: Sequence[str], types: Mapping[str, pa.DataType]) -> pa.Schema:
    """A schema of ``columns`` in that order; strings unless ``types`` says otherwise (for tables outside the
    workdir, such as an evaluation's answers and verdicts)."""
    import pyarrow as pa

    return pa.schema([pa.field(c, types.get(c, pa.string())) for c in columns])


def _schema(columns: Sequence[str]) -> pa.Schema:
    from recycled_datasets.chat import message_type

    return arrow_schema(columns, _types() | {c: message_type() for c in (*CHAT_COLUMNS, CONTEXT_COLUMN)})


def _with_chat(columns: tuple[str, ...]) -> tuple[str, ...]:
    at = columns.index("output") + 1
    return (*columns[:at], *CHAT_COLUMNS, *columns[at:])


def reflections_schema(*, context: bool = False) -> pa.Schema:
    """The wide reflections table; ``context`` adds the chat rows' earlier turns (null where a row has none)."""
    return _schema((*REFLECTION_COLUMNS, CONTEXT_COLUMN) if context else REFLECTION_COLUMNS)


def scores_schema() -> pa.Schema:
    """A student's scores: one row per (id, variant)."""
    return _schema(SCORE_TABLE_COLUMNS)


def row_scores_schema() -> pa.Schema:
    """``srecycle score``'s output: one student's scores of each row of a file as it is (no variants)."""
    return _schema(("id", "source_index", *SCORE_COLUMNS))


def subset_schema(*, context: bool = False) -> pa.Schema:
    """A student's subset as the selection writes it into the workdir."""
    return _schema((*SUBSET_COLUMNS, CONTEXT_COLUMN) if context else SUBSET_COLUMNS)


def release_subset_schema() -> pa.Schema:
    """A student's config in a release: the subset with the row as chat turns."""
    return _schema(_with_chat(SUBSET_COLUMNS))


def reflections_long_schema() -> pa.Schema:
    """The ``reflections`` config: one row per (source row, variant), with the row as chat turns."""
    return _schema(_with_chat(REFLECTIONS_LONG_COLUMNS))


def release_scores_schema() -> pa.Schema:
    """The ``scores`` config: every variant of every row with each student's scores."""
    return _schema(RELEASE_SCORES_COLUMNS)


def features(schema: pa.Schema) -> datasets.Features:
    """The ``datasets`` Features of a table, derived from its schema (never written twice)."""
    import datasets

    return datasets.Features.from_arrow_schema(schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` as exactly the columns and types of ``schema`` (in its order); a missing column is an error."""
    import pyarrow as pa

    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise KeyError(f"missing column(s) {', '.join(missing)}")
    arrays = [table.column(n).cast(schema.field(n).type) for n in schema.names]
    return pa.Table.from_arrays(arrays, schema=schema)


def report_bytes(report: Mapping[str, Any]) -> bytes:
    """The one byte layout of ``report.json``: indent 2, keys in the order given, UTF-8, a final newline."""
    return (json.dumps(dict(report), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
