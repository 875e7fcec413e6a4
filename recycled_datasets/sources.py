"""Read source rows from any of the forms users have, into :class:`SourceRow` with stable ids (docs/method.md, 1).

Forms: Alpaca JSON (instruction/input/output), WizardLM 70k JSON (instruction/output), chat rows (``messages``
of role/content or ShareGPT ``conversations`` of from/value, see ``chat.py``), as JSON, JSONL or parquet; a
folder in Hub layout or written by ``save_to_disk``, or a Hub dataset id (``ORG/NAME[:SPLIT]``, through
``datasets``); and the reference authors' form where each row is wrapped in a struct column ``data``.
Every invalid row is reported with its file, row and field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recycled_datasets.chat import chat_row, is_chat_record
from recycled_datasets.errors import InputError
from recycled_datasets.hf_datasets import split_of
from recycled_datasets.records import SourceRow, Turn, assign_ids
from recycled_datasets.repo_ids import is_repo_id

logger = logging.getLogger(__name__)

_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst")


@dataclass(frozen=True, slots=True)
class KnownSource:
    """A source the project names (``--source NAME``): where its rows are, what a card calls it, its licence."""

    name: str
    path: str  # a Hub id, or the bundled sample's file
    label: str
    license: str  # as the source's own card declares it (the sample: the project's licence)
    public: bool = True  # a public Hub set (a card cites it as its source dataset)


# The one table of the sources a build, a builder, a card or a fine-tuned model's card may name.
KNOWN_SOURCES = (
    KnownSource("alpaca", "tatsu-lab/alpaca", "Alpaca", "cc-by-nc-4.0"),
    KnownSource("wizardlm", "WizardLMTeam/WizardLM_evol_instruct_70k", "WizardLM", "mit"),
    KnownSource("sample", "recycled_datasets/data/sample.jsonl", "sample", "apache-2.0", public=False),
)


def known_source(source: str) -> KnownSource | None:
    """The known source named ``source`` (its ``--source`` name or its path), else None."""
    return next((k for k in KNOWN_SOURCES if source in (k.name, k.path)), None)


def license_of(source: str) -> str:
    """The licence of a known source (by name or path); ``other`` for any other rows."""
    known = known_source(source)
    return known.license if known is not None else "other"


@dataclass(frozen=True, slots=True)
class InvalidRow:
    """A row dropped by ``skip_invalid``: where it was and why."""

    row: int
    field: str | None
    reason: str


@dataclass(slots=True)
class SourceData:
    """The valid rows of a source, in source order, and the rows that were skipped."""

    path: str
    rows: list[SourceRow]
    invalid: list[InvalidRow] = field(default_factory=list)


_TOO_DEEP = "holds JSON nested too deeply to read (thousands of levels); a row is one flat object"


def _looks_like_jsonl(text: str) -> bool:
    return text.lstrip()[:1] == "{" and "\n{" in text.strip()


def _records_from_json(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except RecursionError as e:
        raise InputError(_TOO_DEEP, path=str(path)) from e
    except json.JSONDecodeError as e:
        if _looks_like_jsonl(text):
            return _records_from_jsonl(path, text)  # JSON lines in a file named .json
        truncated = " (the file looks truncated)" if text.rstrip()[-1:] not in ("]", "}") else ""
        raise InputError(
            f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}{truncated}; "
            "expected a JSON list of objects with instruction/input/output",
            path=str(path),
        ) from e
    if isinstance(data, dict) and (
        {"instruction", "output", "messages", "conversations"} & data.keys() or isinstance(data.get("data"), dict)
    ):
        data = [data]  # a file holding a single row
    if isinstance(data, dict):
        for key in ("data", "rows", "train"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise InputError(
            f"expected a JSON list of rows, found a {type(data).__name__}; "
            'write the rows as [{"instruction": ..., "input": ..., "output": ...}, ...] or use JSONL',
            path=str(path),
        )
    return enumerate(data, start=1)


def _records_from_jsonl(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except RecursionError as e:
            raise InputError(_TOO_DEEP, path=str(path), row=lineno) from e
        except json.JSONDecodeError as e:
            # Yielded, not raised: read_source raises it, or skips the line with --skip-invalid.
            record = InputError(
                f"not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object",
                path=str(path),
                row=lineno,
            )
        yield lineno, record


def _records_from_parquet(path: Path) -> Iterable[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"not a readable parquet file ({e})", path=str(path)) from e
    return enumerate(table.to_pylist(), start=1)


def _records_from_datasets(source: str) -> Iterable[tuple[int, Any]]:
    from recycled_datasets.hf_datasets import records_from_datasets

    return records_from_datasets(source)


def _validate(record: Any, path: str, row: int) -> tuple[str, str, str]:
    if isinstance(record, dict) and isinstance(record.get("data"), dict) and "instruction" not in record:
        record = record["data"]  # the reference authors' form: a struct column `data`
    if not isinstance(record, dict):
        raise InputError(f"expected an object, found {type(record).__name__}", path=path, row=row)
    values: dict[str, str] = {}
    for name, required in (("instruction", True), ("input", False), ("output", True)):
        value = record.get(name)
        if value is None:
            if required:
                raise InputError(
                    f"is missing; every row needs a non-empty '{name}' (fix the row, or pass --skip-invalid)",
                    path=path,
                    row=row,
                    field=name,
                )
            value = ""
        if not isinstance(value, str):
            raise InputError(
                f"must be a string, found {type(value).__name__} (fix the row, or pass --skip-invalid)",
                path=path,
                row=row,
                field=name,
            )
        if not _encodable(value):
            raise InputError(
                "holds invalid Unicode (a lone surrogate escape such as \\ud800); fix the row, or pass --skip-invalid",
                path=path,
                row=row,
                field=name,
            )
        if required and not value.strip():
            raise InputError(
                "is empty; every row needs a non-empty instruction and output (fix the row, or pass --skip-invalid)",
                path=path,
                row=row,
                field=name,
            )
        values[name] = value
    return values["instruction"], values["input"], values["output"]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hub_form(name: str) -> bool:
    """``ORG/NAME`` that cannot be a local path: one slash, no file suffix, no leading ``.``/``/``/``~``, nothing
    of that name here, and no local folder ``ORG``."""
    return (
        is_repo_id(name)
        and Path(name).suffix.lower() not in _FILE_SUFFIXES
        and not Path(name).exists()
        and not Path(name.split("/")[0]).exists()
    )


def _offline() -> bool:
    import os

    return any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` is tried as a Hub dataset id: an ``ORG/NAME`` form (see :func:`_hub_form`), never offline."""
    return _hub_form(name) and not _offline()


def read_file_records(path: Path) -> Iterable[tuple[int, Any]]:
    """(row number, object) of every row of a JSON, JSONL or parquet file, in order.

    The type comes from the suffix, else from the text (JSON lines, or a JSON list); an empty, whitespace-only,
    non-UTF-8 or unreadable file raises :class:`InputError` naming it. A JSON line that does not parse comes as
    an :class:`InputError` in place of its object (naming the file and line), for the caller to raise or skip.
    """
    path = Path(path)
    name = str(path)
    if path.stat().st_size == 0:
        raise InputError("the file is empty; expected rows", path=name)
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".parquet":
        return _records_from_parquet(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"is not UTF-8 text ({e.reason} at byte {e.start})", path=name) from e
    if not text.strip():
        raise InputError("the file holds only whitespace; expected rows", path=name)
    if suffix == ".jsonl" or (suffix != ".json" and _looks_like_jsonl(text)):
        return _records_from_jsonl(path, text)
    if suffix in (".json", "") or text.lstrip()[:1] in "[{":
        return _records_from_json(path, text)
    raise InputError("unknown file type; use .json, .jsonl or .parquet", path=name)


def read_source(source: str | Path, *, skip_invalid: bool = False, limit: int | None = None) -> SourceData:
    """Read every row of ``source`` (see the module doc for the forms) in order.

    Raises :class:`InputError` naming the file, row and field of the first invalid row, unless
    ``skip_invalid``, in which case such rows are dropped and listed in ``SourceData.invalid``.
    ``limit`` keeps the first N valid rows.
    """
    path = Path(source)
    name = str(source)
    if path.is_file():
        records = read_file_records(path)
    elif path.is_dir() or Path(split_of(name)[0]).is_dir() or looks_like_hub_id(name):
        records = _records_from_datasets(name)  # a local datasets folder (with or without :SPLIT), or a Hub id
    else:
        offline = is_repo_id(name) and not looks_like_hub_id(name) and Path(name).suffix.lower() not in _FILE_SUFFIXES
        hint = " (offline mode: Hub ids are not tried)" if offline and not Path(name.split("/")[0]).exists() else ""
        raise InputError(f"no such file or folder (nor a Hub dataset id of the form org/name){hint}", path=name)

    triples: list[tuple[str, str, str] | tuple[str, str, str, tuple[Turn, ...]]] = []
    invalid: list[InvalidRow] = []
    for row, record in records:
        try:
            if isinstance(record, InputError):  # a line that is not JSON
                raise record
            triples.append(chat_row(record, name, row) if is_chat_record(record) else _validate(record, name, row))
        except InputError as e:
            if not skip_invalid:
                raise
            invalid.append(InvalidRow(row=row, field=e.field, reason=str(e)))
        if limit is not None and len(triples) >= limit:
            break
    if not triples:
        raise InputError(
            "holds no valid rows" + (f" ({len(invalid)} invalid rows skipped)" if invalid else ""), path=name
        )
    if invalid:
        logger.warning("%s: skipped %d invalid rows (first: %s)", name, len(invalid), invalid[0].reason)
    return SourceData(path=name, rows=assign_ids(triples), invalid=invalid)
