"""The release views of a workdir: what a student config, the ``reflections`` config and the ``scores``
config hold. The release tree and the ``datasets`` builders both write exactly these tables.

Each view is a stream of tables of at most :data:`BATCH_ROWS` rows, in the config's row order, so a 70k-row
source's release is never built whole in Python objects: the text moves as arrow columns, and only a batch's
rows are ever turned into chat turns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recycled_datasets.chat import add_chat_columns, contexts_of
from recycled_datasets.errors import StoreError
from recycled_datasets.records import VARIANTS
from recycled_datasets.workdir.layout import Workdir
from recycled_datasets.workdir.schema import (
    REFLECTIONS_LONG_COLUMNS,
    TEXT_FIELDS,
    conform,
    reflections_long_schema,
    release_scores_schema,
    release_subset_schema,
    scores_schema,
    subset_schema,
)
from recycled_datasets.workdir.tables import (
    as_workdir,
    read_reflections_table,
    read_scores_table,
    read_subset_table,
)

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_ROWS = 8192  # rows of a view per table: bounds the Python objects of the chat columns


def release_subset(workdir: Workdir | Path, key: str) -> Iterator[pa.Table]:
    """Student ``key``'s config: its subset with the row as chat turns (``messages``, ``prompt``, ``completion``)."""
    return chat_subset(read_subset_table(as_workdir(workdir), key))


def chat_subset(table: pa.Table) -> Iterator[pa.Table]:
    """A subset table (as read from ``subset.parquet``) as its config's rows: :func:`release_subset`."""
    for start in range(0, table.num_rows, BATCH_ROWS):
        part = table.slice(start, BATCH_ROWS)
        yield conform(add_chat_columns(conform(part, subset_schema()), contexts_of(part)), release_subset_schema())


def long_reflections(wide: pa.Table) -> Iterator[pa.Table]:
    """One row per (source row, variant), source order then ori, ins, res, both, with the row as chat turns.

    Long rather than wide, so the config has the subsets' instruction/input/output columns and a variant is
    one filter away; ``status``/``detail`` say whether the teacher's text was used (``ori`` is always ok).
    """
    import pyarrow as pa

    schema = pa.schema([reflections_long_schema().field(c) for c in REFLECTIONS_LONG_COLUMNS])
    step = max(1, BATCH_ROWS // len(VARIANTS))
    for start in range(0, wide.num_rows, step):
        part = wide.slice(start, step)
        n = part.num_rows
        blocks = []  # variant-major; taken below into source order, variants in VARIANTS order
        for v in VARIANTS:
            teacher = v != "ori"
            columns = {
                "id": part.column("id"),
                "source_index": part.column("source_index"),
                "variant": pa.array([v] * n, pa.string()),
                **{f: part.column(f"{v}_{f}") for f in TEXT_FIELDS},
                "status": part.column(f"{v}_status") if teacher else pa.array(["ok"] * n, pa.string()),
                "detail": part.column(f"{v}_detail") if teacher else pa.nulls(n, pa.string()),
            }
            blocks.append(conform(pa.table(columns), schema))
        order = pa.array([k * n + r for r in range(n) for k in range(len(VARIANTS))], pa.int64())
        plain = pa.concat_tables(blocks).take(order)
        contexts = [context for context in contexts_of(part) for _ in VARIANTS]
        yield conform(add_chat_columns(plain, contexts), reflections_long_schema())


def release_reflections(workdir: Workdir | Path) -> Iterator[pa.Table]:
    """The ``reflections`` config: every variant of every source row (student independent)."""
    return long_reflections(read_reflections_table(as_workdir(workdir)))


def release_scores(workdir: Workdir | Path, keys: Sequence[str]) -> Iterator[pa.Table]:
    """The ``scores`` config: for each student in ``keys`` (in that order), every variant it scored, with the
    variant's text, so others can cut their own subsets from the same scores."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wd = as_workdir(workdir)
    wide = read_reflections_table(wd)
    n = wide.num_rows
    # Every variant's text, variant-major: the text of (row r, variant k) is at k * n + r.
    texts = pa.concat_tables(
        pa.table({f: pc.fill_null(wide.column(f"{v}_{f}"), "") if f == "input" else wide.column(f"{v}_{f}")
                  for f in TEXT_FIELDS})
        for v in VARIANTS
    )  # fmt: skip
    row_of = {row_id: r for r, row_id in enumerate(wide.column("id").to_pylist())}
    variant_of = {v: k * n for k, v in enumerate(VARIANTS)}
    schema = release_scores_schema()
    for key in keys:
        scores = conform(read_scores_table(wd, key), scores_schema())
        for start in range(0, scores.num_rows, BATCH_ROWS):
            part = scores.slice(start, BATCH_ROWS)
            pairs = zip(part.column("id").to_pylist(), part.column("variant").to_pylist(), strict=True)
            at = [
                variant_of[v] + row_of[row_id] if row_id in row_of and v in variant_of else None for row_id, v in pairs
            ]
            if None in at:
                lost = at.index(None)
                raise StoreError(
                    f"{wd.student(key).scores} scores a row that {wd.reflections} does not hold "
                    f"({part.column('id')[lost].as_py()}); rebuild it with "
                    f"srecycle build --workdir {wd.root} --student {key}"
                )
            found = texts.take(pa.array(at, pa.int64()))
            columns = {
                "student": pa.array([key] * part.num_rows, pa.string()),
                **{c: part.column(c) for c in ("id", "variant")},
                **{f: found.column(f) for f in TEXT_FIELDS},
                **{c: part.column(c) for c in part.column_names if c not in ("id", "variant")},
            }
            yield conform(pa.table(columns), schema)
