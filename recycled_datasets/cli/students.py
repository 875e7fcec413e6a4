"""``srecycle students``: the students table (shipped keys plus the user's own)."""

from __future__ import annotations

from recycled_datasets.cli.options import StudentsFile


def students(students_file: StudentsFile = None) -> None:
    """List the known students: each key is the config name of its subset."""
    from rich.table import Table

    from recycled_datasets.models import students_table
    from recycled_datasets.progress import console

    table = Table(title="students")
    for column in ("key", "model", "revision", "template", "dtype"):
        table.add_column(column)
    for spec in students_table(students_file).values():
        table.add_row(spec.key, spec.model, spec.revision[:12] or "-", spec.template, spec.dtype)
    console().print(table)
