"""The reference authors' reflections imported as a workdir's reflections, so every student can be built from
them with no teacher at all (docs/method.md, section 8).

Two sources are read:

- their published sets (Hub id or a local folder of files named by split: ``origin``, ``reflect_instruction``,
  ``reflect_response``, ``reflect_both``), rows of instruction / input / output, possibly wrapped in a struct
  column ``data``;
- the files their own reflection scripts write (tianyi-lab/Reflection_Tuning, ``reflection_code/``), one per
  split: the instruction reflection's post-processed list (rows of the new instruction and answer) or its
  "mid" file (the old pair beside ``new_instruct`` / ``new_answer``), and the response reflection's "mid" file,
  whose new answer is ``better_answer`` while its ``output`` is the old answer.

Each file is recognized by its keys, and a split only takes the shapes that can hold it; anything else is a
one-line error saying what was expected, so no field is ever read as another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError, InputError
from recycled_datasets.records import STATUS_FELL_BACK, STATUS_OK, VARIANTS, assign_ids
from recycled_datasets.stages.reflect import reflections_meta
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.tables import has_reflections, read_reflections, write_reflections

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
    replaced: bool = False  # the workdir held other reflections, replaced with --force
    already: bool = False  # the workdir already held exactly these reflections: nothing was written


@dataclass(frozen=True, slots=True)
class Shape:
    """A kind of row the reference writes: its keys, and where the variant's fields are read from.

    ``fields`` names the keys of (instruction, input, output); ``reflected`` the keys of the pair the row
    reflects (a mid file keeps it beside the new text), checked against the split it was made from; ``empty_ok``
    a key the reference leaves empty where it found nothing, the old answer then standing in for the new.
    """

    name: str
    required: frozenset[str]
    optional: frozenset[str]
    fields: tuple[str, str, str]
    reflected: tuple[str, str] | None = None
    empty_ok: str | None = None

    def matches(self, keys: set[str]) -> bool:
        return self.required <= keys <= self.required | self.optional


ROWS = Shape(
    "rows of instruction, input, output (a published split, or reflect_instruction_postprocess.py's --save_path)",
    frozenset({"instruction", "output"}),
    frozenset({"input"}),
    ("instruction", "input", "output"),
)
INSTRUCTION_MID = Shape(
    "reflect_instruction_postprocess.py's mid file (instruction, input, output, new_instruct, new_answer, new_input)",
    frozenset({"instruction", "output", "new_instruct", "new_answer"}),
    frozenset({"input", "new_input"}),
    ("new_instruct", "new_input", "new_answer"),
    reflected=("instruction", "output"),
)
RESPONSE_MID = Shape(
    "reflect_response_postprocess.py's mid file (instruction, input, output, better_answer)",
    frozenset({"instruction", "output", "better_answer"}),
    frozenset({"input"}),
    ("instruction", "input", "better_answer"),
    reflected=("instruction", "output"),
    empty_ok="better_answer",
)
SHAPES = (ROWS, INSTRUCTION_MID, RESPONSE_MID)
# The shapes each split can be given in, and the split whose rows a mid file of it reflects.
SPLIT_SHAPES: dict[str, tuple[Shape, ...]] = {
    "origin": (ROWS,),
    "reflect_instruction": (ROWS, INSTRUCTION_MID),
    "reflect_response": (ROWS, RESPONSE_MID),
    "reflect_both": (ROWS, RESPONSE_MID),
}
REFLECTS: dict[str, str] = {
    "reflect_instruction": "origin",
    "reflect_response": "origin",
    "reflect_both": "reflect_instruction",
}


@dataclass(frozen=True, slots=True)
class _Part:
    """The rows of one file (or one loaded split), with the name errors give it."""

    where: str
    records: list[Any]


# ---- reading the files --------------------------------------------------------------------------------------


def _split_files(folder: Path, split: str) -> list[Path]:
    files = (
        p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in (".json", ".jsonl", ".parquet")
    )
    return [p for p in files if p.name.split(".")[0] == split or p.name.split(".")[0].startswith(f"{split}-")]


def _records_of_file(path: Path) -> list[Any]:
    where = str(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist()
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"is not a readable parquet file ({type(e).__name__}: {e})", path=where) from e
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".jsonl":
            records = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise InputError(f"is not valid JSON on this line ({e.msg})", path=where, row=number) from e
            return records
        data = json.loads(text)
    except OSError as e:
        raise InputError(f"cannot be read ({e.strerror or e})", path=where) from e
    except UnicodeDecodeError as e:
        raise InputError(
            f"is not UTF-8 text (byte {e.start}); give the file as the reference wrote it", path=where
        ) from e
    except json.JSONDecodeError as e:
        raise InputError(f"is not valid JSON ({e.msg}, line {e.lineno})", path=where) from e
    except RecursionError as e:
        raise InputError("is nested too deeply to be a file of rows", path=where) from e
    if not isinstance(data, list):
        raise InputError(f"expected a JSON list of rows, found a JSON {type(data).__name__}", path=where)
    return data


def _folder_splits(path: Path, source: str) -> dict[str, list[_Part]] | None:
    files = {split: _split_files(path, split) for split in REFERENCE_SPLITS}
    if all(files.values()):
        return {split: [_Part(str(f), _records_of_file(f)) for f in fs] for split, fs in files.items()}
    if any(files.values()):
        lacking = [s for s, fs in files.items() if not fs]
        raise InputError(f"has no files for the splits {lacking} (expected files named like origin.json)", path=source)
    return None


def _hub_splits(source: str) -> dict[str, list[_Part]]:
    from recycled_datasets.hf_datasets import load_dataset

    try:
        loaded = load_dataset(source)
    except Exception as e:  # datasets raises many types: not found, no network, bad layout
        raise InputError(
            f"could not load it with datasets.load_dataset ({type(e).__name__}: {e}); give a local folder with "
            f"the split files ({', '.join(REFERENCE_SPLITS)}) or a reachable Hub dataset id",
            path=source,
        ) from e
    if any(s not in loaded for s in REFERENCE_SPLITS):
        raise InputError(f"has the splits {sorted(loaded)}, not {list(REFERENCE_SPLITS)}", path=source)
    return {split: [_Part(f"{source} (split {split})", list(loaded[split]))] for split in REFERENCE_SPLITS}


def _reference_splits(source: str) -> dict[str, list[_Part]]:
    """The four splits' raw rows, from a local folder (files named by split) or through ``datasets``."""
    path = Path(source)
    if path.is_dir():
        found = _folder_splits(path, source)
        if found is not None:
            return found
    elif path.exists():
        raise InputError(
            "is a file; give the folder that holds the four split files "
            f"({', '.join(REFERENCE_SPLITS)}), a Hub dataset id, or each file with --origin, --reflect-instruction, "
            "--reflect-response and --reflect-both",
            path=source,
        )
    return _hub_splits(source)


# ---- reading the rows ---------------------------------------------------------------------------------------


def _shape_of(record: Any, split: str, where: str, row: int) -> Shape:
    if isinstance(record, str):
        raise InputError(
            f"split {split}: the rows are strings, the teacher's raw replies as reflect_instruction.py or "
            "reflect_response.py save them; run the reference's post-processing script and give its output "
            "(instruction reflection: its --save_path or --save_intermediate_path file; response reflection: its "
            "--save_intermediate_path file, whose better_answer holds the new answers)",
            path=where,
            row=row,
        )
    if not isinstance(record, dict):
        raise InputError(f"split {split}: expected an object, found {type(record).__name__}", path=where, row=row)
    keys = set(record)
    for shape in SPLIT_SHAPES[split]:
        if shape.matches(keys):
            return shape
    expected = " or ".join(s.name for s in SPLIT_SHAPES[split])
    other = next((s for s in SHAPES if s.matches(keys)), None)
    found = f"{other.name}, which does not hold the {split} split" if other else f"the keys {sorted(keys)}"
    raise InputError(f"split {split}: found {found}; expected {expected}", path=where, row=row)


def _text(record: dict[str, Any], key: str, split: str, where: str, row: int, *, empty: bool) -> str:
    value = record.get(key)
    if value is None and empty:
        return ""
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise InputError(f"split {split}: '{key}' must be a non-empty string", path=where, row=row, field=key)
    return value


@dataclass(frozen=True, slots=True)
class _Row:
    fields: tuple[str, str, str]
    reflected: tuple[str, str] | None  # the (instruction, output) the row says it reflects
    fell_back: str | None  # why the reference kept the old answer, if it did
    where: str
    row: int


def _read_split(split: str, parts: list[_Part]) -> list[_Row]:
    rows: list[_Row] = []
    for part in parts:
        if not part.records:
            hint = (
                " (the reference's reflect_response_postprocess.py writes an empty list to its --save_path; give "
                "its --save_intermediate_path file, the mid file, whose better_answer holds the new answers)"
                if split in ("reflect_response", "reflect_both")
                else ""
            )
            raise InputError(f"split {split}: the file is an empty list, no rows{hint}", path=part.where)
        shape: Shape | None = None
        for number, record in enumerate(part.records, start=1):
            if isinstance(record, dict) and isinstance(record.get("data"), dict):
                record = record["data"]  # the published sets wrap each row in a struct column
            found = _shape_of(record, split, part.where, number)
            if shape is not None and found is not shape:
                raise InputError(
                    f"split {split}: this row is {found.name}, the rows before it {shape.name}; one file holds one "
                    "kind of row",
                    path=part.where,
                    row=number,
                )
            shape = found
            at = (split, part.where, number)
            key_instruction, key_input, key_output = shape.fields
            instruction = _text(record, key_instruction, *at, empty=False)
            input = _text(record, key_input, *at, empty=True)
            output = _text(record, key_output, *at, empty=key_output == shape.empty_ok)
            reflected = None
            if shape.reflected is not None:
                old_instruction, old_output = (_text(record, k, *at, empty=False) for k in shape.reflected)
                reflected = (old_instruction, old_output)
            fell_back = None
            if not output.strip():  # only where the shape allows an empty new answer
                output = reflected[1] if reflected is not None else output
                fell_back = f"the reference found no new answer ({key_output} is empty) and kept the old one"
            rows.append(_Row((instruction, input, output), reflected, fell_back, part.where, number))
    return rows


def _check_reflected(split: str, rows: list[_Row], base: list[_Row]) -> None:
    """A mid file keeps the pair it reflected: it must be the same row of the split it was made from."""
    for i, (row, of) in enumerate(zip(rows, base, strict=True), start=1):
        if row.reflected is None:
            continue
        if (row.reflected[0].strip(), row.reflected[1].strip()) != (of.fields[0].strip(), of.fields[2].strip()):
            raise InputError(
                f"split {split}: the pair this row reflects (its instruction and output) is not row {i} of "
                f"{REFLECTS[split]}; the files are not of the same rows in the same order (reflect_both reflects the "
                "instruction reflection's rows, reflect_response the origin's)",
                path=row.where,
                row=row.row,
            )


def _frame(splits: Mapping[str, list[_Row]], source: str) -> tuple[Any, dict[str, int]]:
    import polars as pl

    sizes = {split: len(rows) for split, rows in splits.items()}
    if len(set(sizes.values())) != 1:
        raise InputError(f"the four splits must have one row per source row each, found {sizes}", path=source)
    for split, base_split in REFLECTS.items():
        _check_reflected(split, splits[split], splits[base_split])
    by_variant = {REFERENCE_SPLITS[split]: rows for split, rows in splits.items()}
    ids = assign_ids([r.fields for r in by_variant["ori"]])
    columns: dict[str, list[Any]] = {"id": [r.id for r in ids], "source_index": [r.index for r in ids]}
    for v in VARIANTS:
        for i, f in enumerate(("instruction", "input", "output")):
            columns[f"{v}_{f}"] = [r.fields[i] for r in by_variant[v]]
    same = {}
    for v in VARIANTS[1:]:
        columns[f"{v}_status"] = [STATUS_OK if r.fell_back is None else STATUS_FELL_BACK for r in by_variant[v]]
        columns[f"{v}_detail"] = [
            None if r.fell_back is None else f"{v}_output fell back to the original: {r.fell_back}"
            for r in by_variant[v]
        ]
        same[v] = sum(r.fields == o.fields for r, o in zip(by_variant[v], by_variant["ori"], strict=True))
    frame = pl.DataFrame(columns, schema={c: (pl.Int64 if c == "source_index" else pl.String) for c in columns})
    return frame, same


def import_reflections(
    source: str | None, workdir: Path, *, files: Mapping[str, Path] | None = None, force: bool = False
) -> ImportResult:
    """Read the reference authors' four splits into DIR/reflections.parquet + reflections.json.

    ``source`` is a Hub id or a folder of files named by split; ``files`` gives each split's file instead (all
    four). Row i of every split is the same source row; the ``origin`` split gives its id. The teacher is
    recorded as ``reference:<source>`` with prompt version ``reference``, so the workdir then builds any student
    with no teacher at all. A workdir that holds other reflections is left alone unless ``force``; one that
    holds exactly these is left as it is.
    """
    files = dict(files or {})
    if (source is None) == (not files):
        raise ConfigError(
            "give either SOURCE (a Hub id or a folder of files named by split) or the four files "
            "(--origin, --reflect-instruction, --reflect-response, --reflect-both), not both"
            if files
            else "give SOURCE (a Hub id or a folder of files named by split) or the four files --origin, "
            "--reflect-instruction, --reflect-response and --reflect-both"
        )
    if files:
        lacking = [f"--{s.replace('_', '-')}" for s in REFERENCE_SPLITS if files.get(s) is None]
        if lacking:
            raise ConfigError(f"import-reflections needs all four files: {', '.join(lacking)} missing")
        parts = {}
        for split in REFERENCE_SPLITS:
            path = Path(files[split])
            if not path.is_file():
                raise InputError("no such file", path=str(path))
            parts[split] = [_Part(str(path), _records_of_file(path))]
        source = str(files["origin"])
    else:
        assert source is not None
        parts = _reference_splits(source)
    splits = {split: _read_split(split, parts[split]) for split in REFERENCE_SPLITS}
    frame, same = _frame(splits, source)
    if frame.height == 0:
        raise InputError("the splits hold no rows", path=source)
    workdir = Path(workdir)
    meta = reflections_meta(
        frame,
        teacher=f"reference:{source}",
        teacher_revision="",
        prompt_version=REFERENCE_PROMPT_VERSION,
        source=source,
        license="other",
    )
    files_of = Workdir(workdir)
    replaced = has_reflections(files_of)
    if replaced and not force:
        old, old_meta = read_reflections(files_of)
        if old_meta == meta and old.columns == frame.columns and old.rows() == frame.rows():
            return ImportResult(rows=frame.height, source=source, unchanged=same, already=True)
        raise ConfigError(
            f"{workdir} already holds reflections (teacher {old_meta.get('teacher')}, {old.height} rows); "
            "importing would replace them and leave its students' scores and subsets stale: pass --force to "
            "replace them, or import into a new --workdir"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    write_reflections(files_of, frame, meta)
    return ImportResult(rows=frame.height, source=source, unchanged=same, replaced=replaced)
