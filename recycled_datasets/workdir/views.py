"""The release views of a workdir: what a student config, the ``reflections`` config and the ``scores``
config hold. The release tree and the ``datasets`` builders both write exactly these tables.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def release_subset(workdir: Workdir | Path, key: str) -> pa.Table:
    """Student ``key``'s config: its subset with the row as chat turns (``messages``, ``prompt``, ``completion``)."""
    table = read_subset_table(as_workdir(workdir), key)
    plain = conform(table, subset_schema())
    return conform(add_chat_columns(plain, contexts_of(table)), release_subset_schema())


def long_reflections(wide: pa.Table) -> pa.Table:
    """One row per (source row, variant), source order then ori, ins, res, both, with the row as chat turns.

    Long rather than wide, so the config has the subsets' instruction/input/output columns and a variant is
    one filter away; ``status``/``detail`` say whether the teacher's text was used (``ori`` is always ok).
    """
    import pyarrow as pa

    n = wide.num_rows
    columns: dict[str, list] = {c: [] for c in REFLECTIONS_LONG_COLUMNS}
    ids = wide.column("id").to_pylist()
    index = wide.column("source_index").to_pylist()
    per_variant = {
        v: {
            f: wide.column(f"{v}_{f}").to_pylist()
            for f in (*TEXT_FIELDS, *(("status", "detail") if v != "ori" else ()))
        }
        for v in VARIANTS
    }
    for row in range(n):
        for v in VARIANTS:
            cols = per_variant[v]
            columns["id"].append(ids[row])
            columns["source_index"].append(index[row])
            columns["variant"].append(v)
            for f in TEXT_FIELDS:
                columns[f].append(cols[f][row])
            columns["status"].append(cols["status"][row] if v != "ori" else "ok")
            columns["detail"].append(cols["detail"][row] if v != "ori" else None)
    plain = pa.table(columns, schema=pa.schema([reflections_long_schema().field(c) for c in REFLECTIONS_LONG_COLUMNS]))
    contexts = [context for context in contexts_of(wide) for _ in VARIANTS]
    return conform(add_chat_columns(plain, contexts), reflections_long_schema())


def release_reflections(workdir: Workdir | Path) -> pa.Table:
    """The ``reflections`` config: every variant of every source row (student independent)."""
    return long_reflections(read_reflections_table(as_workdir(workdir)))


def release_scores(workdir: Workdir | Path, keys: Sequence[str]) -> pa.Table:
    """The ``scores`` config: for each student in ``keys`` (in that order), every variant it scored, with the
    variant's text, so others can cut their own subsets from the same scores."""
    import pyarrow as pa

    wd = as_workdir(workdir)
    wide = read_reflections_table(wd)
    ids = wide.column("id").to_pylist()
    texts: dict[tuple[str, str], tuple[str, str, str]] = {}
    for v in VARIANTS:
        fields = [wide.column(f"{v}_{f}").to_pylist() for f in TEXT_FIELDS]
        for row_id, instruction, input_, output in zip(ids, *fields, strict=True):
            texts[(row_id, v)] = (instruction, input_ or "", output)
    schema = release_scores_schema()
    parts = []
    for key in keys:
        scores = conform(read_scores_table(wd, key), scores_schema())
        found = [
            texts.get(pair) for pair in zip(scores.column("id").to_pylist(), scores.column("variant").to_pylist())
        ]
        if any(t is None for t in found):
            lost = next(i for i, t in enumerate(found) if t is None)
            raise StoreError(
                f"{wd.student(key).scores} scores a row that {wd.reflections} does not hold "
                f"({scores.column('id')[lost].as_py()}); rebuild it with "
                f"srecycle build --workdir {wd.root} --student {key}"
            )
        columns = {
            "student": pa.array([key] * scores.num_rows, pa.string()),
            **{c: scores.column(c) for c in ("id", "variant")},
            **{f: pa.array([t[j] for t in found], pa.string()) for j, f in enumerate(TEXT_FIELDS)},
            **{c: scores.column(c) for c in scores.column_names if c not in ("id", "variant")},
        }
        parts.append(conform(pa.table(columns), schema))
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts)
