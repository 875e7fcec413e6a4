"""Test questions and answer files: what ``generate`` reads, and what ``judge`` pairs.

The paper's five test sets spell their question differently (``text`` in Vicuna, ``prompt`` in Koala,
``instruction`` in Self-Instruct, ``Instruction`` in WizardLM, a ``conversations`` turn list in LIMA); any
other JSON / JSONL / parquet file with one of those fields is read the same way. A test set is named after
its file: the stem without ``_test_set`` (``vicuna_test_set.jsonl`` -> ``vicuna``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.errors import InputError

SUFFIXES = (".json", ".jsonl", ".parquet")
PAPER_TEST_SETS = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")
INSTRUCTION_FIELDS = ("text", "prompt", "instruction", "Instruction", "question", "conversations")
ID_FIELDS = ("id", "question_id", "idx")
ANSWER_COLUMNS = ("test_set", "instruction", "output")


@dataclass(frozen=True, slots=True)
class Question:
    """One test question: the set it belongs to, its id there (the file's own, else the row number), its text."""

    test_set: str
    id: str
    instruction: str


def set_name(path: Path) -> str:
    stem = Path(path).name
    for suffix in SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem.removesuffix("_test_set")


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(row number, object) of every row of a JSON, JSONL or parquet file; unreadable files name themselves."""
    from recycled_datasets.sources import read_file_records

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path=str(path))
    if path.suffix.lower() not in SUFFIXES:
        raise InputError("unknown file type; use .json, .jsonl or .parquet", path=str(path))
    out = []
    for row, record in read_file_records(path):
        if isinstance(record, InputError):  # a JSONL line that is not JSON
            raise record
        if not isinstance(record, dict):
            raise InputError(f"expected an object, found {type(record).__name__}", path=str(path), row=row)
        out.append((row, record))
    if not out:
        raise InputError("the file holds no rows", path=str(path))
    return out


def _first_human_turn(value: Any) -> Any:
    """The question of a ``conversations`` field: a plain string, or the first human/user turn of a list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for turn in value:
            if isinstance(turn, str):
                return turn
            if isinstance(turn, dict) and str(turn.get("from", turn.get("role", ""))).lower() in ("human", "user"):
                return turn.get("value", turn.get("content"))
    return None


def instruction_of(record: dict[str, Any], *, path: Path, row: int) -> str:
    for name in INSTRUCTION_FIELDS:
        if name in record:
            value = _first_human_turn(record[name]) if name == "conversations" else record[name]
            if not isinstance(value, str) or not value.strip():
                raise InputError("is empty or not text", path=str(path), row=row, field=name)
            return value
    raise InputError(
        f"no question field: expected one of {', '.join(INSTRUCTION_FIELDS)} (found {', '.join(record) or 'none'})",
        path=str(path),
        row=row,
    )


def question_files(paths: Sequence[Path]) -> list[Path]:
    """The test files named by ``paths``: files as given, and the JSON / JSONL / parquet files of folders."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise InputError("the folder holds no .json, .jsonl or .parquet test files", path=str(path))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError("no such file or folder", path=str(path))
    names: dict[str, Path] = {}
    for file in files:
        name = set_name(file)
        if name in names and names[name] != file:
            raise InputError(f"two test files give the test set name {name!r} ({names[name]} and {file})")
        names[name] = file
    return files


def read_questions(paths: Sequence[Path], *, limit: int | None = None) -> list[Question]:
    """Every question of the test sets in ``paths``, file by file in row order (``limit``: the first N per set)."""
    questions: list[Question] = []
    for file in question_files(paths):
        name = set_name(file)
        for row, record in read_records(file)[:limit]:
            ident = next((record[f] for f in ID_FIELDS if record.get(f) is not None), row)
            questions.append(Question(name, str(ident), instruction_of(record, path=file, row=row)))
    return questions


@dataclass(frozen=True, slots=True)
class Answer:
    """One model answer to one test question, as an answer file holds it."""

    test_set: str
    instruction: str
    output: str
    id: str | None = None
    model: str | None = None


def read_answers(path: Path) -> list[Answer]:
    """The answers of a file that ``srecycle generate`` wrote, or any JSON / JSONL / parquet file with
    ``test_set``, ``instruction`` and ``output``."""
    missing = f"missing column (answer files need {', '.join(ANSWER_COLUMNS)})"
    answers = []
    for row, record in read_records(path):
        for name in ANSWER_COLUMNS:
            if name not in record:
                raise InputError(missing, path=str(path), row=row, field=name)
            if not isinstance(record[name], str):
                raise InputError("must be text", path=str(path), row=row, field=name)
        ident, model = (None if record.get(key) is None else str(record[key]) for key in ("id", "model"))
        answers.append(Answer(record["test_set"], record["instruction"], record["output"], ident, model))
    return answers
