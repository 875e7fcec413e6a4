"""Durable, deterministic file writes shared by every stage.

Whole files appear atomically (a temporary name, then a rename), so a reader or a resumed run never sees
half a file; the same data always gives the same bytes (one row group, fixed compression, no varying
metadata), so two builds from the same inputs are byte-identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa


ROW_GROUP_ROWS = 100_000  # bounded row groups keep the Hub's viewer and streaming readers fast


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a per-process temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """JSON with a fixed layout (indent 2, keys in the order given), written atomically."""
    return atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def arrow_schema(columns: Sequence[str], types: dict[str, pa.DataType]) -> pa.Schema:
    """A schema of ``columns`` in that order; strings unless ``types`` says otherwise."""
    import pyarrow as pa

    return pa.schema([pa.field(c, types.get(c, pa.string())) for c in columns])


def write_table(table: pa.Table, path: Path) -> Path:
    """Write an arrow table as parquet with the project's fixed options, atomically."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(
        table.replace_schema_metadata(None),
        tmp,
        compression="zstd",
        compression_level=3,
        row_group_size=ROW_GROUP_ROWS,
        use_dictionary=True,
        write_statistics=True,
        store_schema=False,
    )
    os.replace(tmp, path)
    return path


def write_parquet(frame: pl.DataFrame, path: Path, schema: pa.Schema | None = None) -> Path:
    """Write a polars frame as parquet; with ``schema``, exactly those columns cast to those types."""
    import pyarrow as pa

    table = frame.to_arrow()
    if schema is not None:
        table = table.select(schema.names)
        table = pa.Table.from_arrays([table.column(n).cast(schema.field(n).type) for n in schema.names], schema=schema)
    return write_table(table, path)
