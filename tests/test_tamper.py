"""Stage tables that were changed after srecycle wrote them, with a digest recomputed so that it still matches:
every column of every stage table with the wrong type, every column missing, and an extra column. Each is one
line naming the file and the command that makes it again, exit 2, and nothing is written before it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from test_reliability import STUDENT, cli, finished_workdir, one_line_error

from recycled_datasets.workdir.schema import reflections_schema, scores_schema, subset_schema

# Each stage table, the schema srecycle writes it with, and the command that reads it first.
TABLES = {
    "reflections.parquet": (reflections_schema(), "select"),
    f"students/{STUDENT}/scores.parquet": (scores_schema(), "select"),
    f"students/{STUDENT}/subset.parquet": (subset_schema(), "push"),
}


def _cases() -> list[tuple[str, str, str | None]]:
    cases: list[tuple[str, str, str | None]] = []
    for name, (schema, _) in TABLES.items():
        cases += [(name, "wrong_type", column) for column in schema.names]
        cases += [(name, "missing", column) for column in schema.names]
        cases.append((name, "extra", None))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_workdir(tmp_path_factory.mktemp("tamper") / "work")


def _wrong(column: pa.ChunkedArray) -> pa.Array:
    """Values of another type than the column's: numbers for text, text for numbers."""
    n = len(column)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pa.array(range(n), pa.int64())
    return pa.array([f"x{i}" for i in range(n)], pa.string())


def _tamper(path: Path, kind: str, column: str | None) -> None:
    """Change the table the way a hand edit would, then write it with a digest that matches again."""
    import pyarrow.parquet as pq

    from recycled_datasets.workdir.files import digest_path

    table = pq.read_table(path)
    if kind == "wrong_type":
        assert column is not None
        table = table.set_column(table.schema.get_field_index(column), column, _wrong(table.column(column)))
    elif kind == "missing":
        table = table.drop_columns([column])
    else:
        table = table.append_column("added_by_hand", pa.array(["x"] * table.num_rows, pa.string()))
    pq.write_table(table, path)
    digest_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("name", "kind", "column"), CASES, ids=[f"{n}-{k}-{c}" for n, k, c in CASES])
def test_a_tampered_stage_table_with_a_valid_digest_is_one_line_naming_it(
    name: str, kind: str, column: str | None, template: Path, tmp_path: Path, capsys
):
    wd = Path(shutil.copytree(template, tmp_path / "wd"))
    _tamper(wd / name, kind, column)
    before = _snapshot(wd)
    command = TABLES[name][1]
    if command == "select":
        args: tuple = ("select", "--workdir", wd, "--student", STUDENT, "--quiet")
    else:
        args = ("push", "--repo", "org/x", "--workdir", wd, "--to-dir", tmp_path / "out", "--quiet")
    code, _, err = cli(capsys, *args)
    line = one_line_error(err)
    assert code == 2, err
    assert str(wd / name) in line and "`srecycle " in line, line
    assert (column or "added_by_hand") in line, line
    after = _snapshot(wd)
    after.pop(".srecycle.lock", None)
    before.pop(".srecycle.lock", None)
    assert after == before  # nothing rewritten before the error
    assert not (tmp_path / "out").exists()
