"""Durable file writes shared by the stages: whole files appear atomically and byte-for-byte deterministic."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


def write_parquet(frame: pl.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` via a temporary file and a rename: readers never see half a file.

    The same frame always gives the same bytes (fixed compression, statistics on, no timestamps).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    frame.write_parquet(tmp, compression="zstd", compression_level=3, statistics=True)
    os.replace(tmp, path)
    return path
