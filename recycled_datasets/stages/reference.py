"""The reference authors' reflections: their four published splits imported as a workdir's reflections,
so every student can be built from them with no teacher at all (docs/method.md, section 8).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.errors import InputError
from recycled_datasets.records import STATUS_OK, VARIANTS, assign_ids
from recycled_datasets.stages.reflect import reflections_meta
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.tables import write_reflections

REFERENCE_SPLITS: dict[str, str] = {
    "origin": "ori",
    "reflect_instruction": "ins",
    "reflect_response": "res",
    "reflect_both": "both",
}
REFERENCE_PROMPT_VERSION = "reference"


@dataclass(frozen=True, slots=True)
class ImportResult:
    rows: int
    source: str
    unchanged: dict[str, int]


def _split_files(folder: Path, split: str) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in (".json", ".jsonl", ".parquet"):
            continue
        stem = path.name.split(".")[0]
        if stem == split or stem.startswith(f"{split}-"):
            found.append(path)
    return found


def _records_of_file(path: Path) -> list[Any]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise InputError("expected a JSON list of rows", path=str(path))
    return data


def _read_records(path: Path) -> list[Any]:
    """:func:`_records_of_file`, with a file that cannot be read as rows turned into an error naming it."""
    try:
        return _records_of_file(path)
    except UnicodeDecodeError as e:
        raise InputError(f"is not UTF-8 text ({e.reason} at byte {e.start})", path=str(path)) from e
    except json.JSONDecodeError as e:
        raise InputError(f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path=str(path)) from e
    except RecursionError as e:
        raise InputError("holds JSON nested too deeply to read; a row is one flat object", path=str(path)) from e
    except InputError:
        raise
    except Exception as e:  # pyarrow raises several unrelated types for a file that is not parquet
        if path.suffix.lower() != ".parquet":
            raise
        raise InputError(f"is not a readable parquet file ({' '.join(str(e).split())[:160]})", path=str(path)) from e


def _reference_splits(source: str) -> dict[str, list[Any]]:
    """The four splits' raw rows, from a local folder (files named by split) or through ``datasets``."""
    path = Path(source)
    if path.is_dir():
        files = {split: _split_files(path, split) for split in REFERENCE_SPLITS}
        if all(files.values()):
            return {split: [rec for f in fs for rec in _read_records(f)] for split, fs in files.items()}
        if any(files.values()):
            lacking = [s for s, fs in files.items() if not fs]
            raise InputError(
                f"has no files for the splits {lacking} (expected files named like origin.json)", path=source
            )
    elif path.exists():
        raise InputError(
            "is a file; give the folder that holds the four split files "
            f"({', '.join(REFERENCE_SPLITS)}) or a Hub dataset id",
            path=source,
        )

    from recycled_datasets.hf_datasets import load_dataset

    try:
        loaded = load_dataset(source)
    except Exception as e:  # datasets raises many types: not found, no network, bad layout
        raise InputError(
            f"could not load it with datasets.load_dataset ({type(e).__name__}: {e}); give a local folder with "
            f"the split files ({', '.join(REFERENCE_SPLITS)}) or a reachable Hub dataset id",
            path=source,
        ) from e
    lacking = [s for s in REFERENCE_SPLITS if s not in loaded]
    if lacking:
        raise InputError(f"has the splits {sorted(loaded)}, not {list(REFERENCE_SPLITS)}", path=source)
    return {split: list(loaded[split]) for split in REFERENCE_SPLITS}


def _unwrap(record: Any, source: str, split: str, row: int) -> tuple[str, str, str]:
    if isinstance(record, dict) and isinstance(record.get("data"), dict):
        record = record["data"]
    if not isinstance(record, dict):
        raise InputError(f"split {split}: expected an object, found {type(record).__name__}", path=source, row=row)
    values = []
    for name in ("instruction", "input", "output"):
        value = record.get(name)
        value = "" if value is None and name == "input" else value
        if not isinstance(value, str) or (name != "input" and not value.strip()):
            raise InputError(f"split {split}: '{name}' must be a non-empty string", path=source, row=row, field=name)
        values.append(value)
    return values[0], values[1], values[2]


def import_reflections(source: str, workdir: Path) -> ImportResult:
    """Read the reference authors' four splits into DIR/reflections.parquet + reflections.json.

    Row i of every split is the same source row; the ``origin`` split gives its id. The teacher is recorded
    as ``reference:<source>`` with prompt version ``reference``, so the workdir then builds any student with
    no teacher at all.
    """
    import polars as pl

    splits = _reference_splits(source)
    sizes = {split: len(rows) for split, rows in splits.items()}
    if len(set(sizes.values())) != 1:
        raise InputError(f"the four splits must have one row per source row each, found {sizes}", path=source)
    unwrapped = {
        REFERENCE_SPLITS[split]: [_unwrap(rec, source, split, i) for i, rec in enumerate(rows, start=1)]
        for split, rows in splits.items()
    }
    rows = assign_ids(unwrapped["ori"])
    if not rows:
        raise InputError("the splits hold no rows", path=source)
    columns: dict[str, list[Any]] = {"id": [r.id for r in rows], "source_index": [r.index for r in rows]}
    for v in VARIANTS:
        triples = unwrapped[v]
        for i, f in enumerate(("instruction", "input", "output")):
            columns[f"{v}_{f}"] = [t[i] for t in triples]
    same = {v: 0 for v in VARIANTS[1:]}
    for v in VARIANTS[1:]:
        columns[f"{v}_status"] = [STATUS_OK] * len(rows)
        columns[f"{v}_detail"] = [None] * len(rows)
        same[v] = sum(t == o for t, o in zip(unwrapped[v], unwrapped["ori"], strict=True))
    frame = pl.DataFrame(columns, schema={c: (pl.Int64 if c == "source_index" else pl.String) for c in columns})
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = reflections_meta(
        frame,
        teacher=f"reference:{source}",
        teacher_revision="",
        prompt_version=REFERENCE_PROMPT_VERSION,
        source=source,
        license="other",
    )
    write_reflections(Workdir(workdir), frame, meta)
    return ImportResult(rows=len(rows), source=source, unchanged=same)
