"""``srecycle import-scores``: the reference authors' published scores of every variant, as a student's scores."""

from __future__ import annotations

from typing import Annotated

import typer

from recycled_datasets.cli.options import MaxLength, Quiet, Student, StudentsFile, Template, Workdir, summary_table
from recycled_datasets.progress import console


def import_scores(
    source: Annotated[
        str,
        typer.Argument(
            help="The published analysis set: a Hub id (e.g. MingLiiii/Alpaca_Analysis_llama2_7b) or a local folder "
            "holding the splits origin, reflect_instruction, reflect_response and reflect_both."
        ),
    ],
    workdir: Workdir,
    student: Student = "llama2-7b",
    template: Template = None,
    max_length: MaxLength = 2048,
    students_file: StudentsFile = None,
    quiet: Quiet = False,
) -> None:
    """Make the published scores a student's scores in the workdir, then `srecycle select` cuts its subset.

    The workdir's reflections must be the same source rows in the same order (srecycle import-reflections of the
    authors' variants); rows are matched by position. The scores are recorded as imported, with the reference
    scoring convention, so no model and no GPU is needed to re-derive the released subset.
    """
    from pathlib import Path

    from recycled_datasets.locking import locked
    from recycled_datasets.models import resolve_student
    from recycled_datasets.stages.imported_scores import import_scores as run_import

    spec = resolve_student(student, template=template, students_file=students_file)
    with locked(workdir, what="workdir"):
        result = run_import(source, Path(workdir), spec, template=spec.template, max_length=max_length)
    table = summary_table("srecycle import-scores", "what", "value")
    table.add_row("source", result.source)
    table.add_row("student", f"{spec.key} ({spec.template} template, reference scoring)")
    table.add_row("rows / pairs", f"{result.rows} / {result.pairs}")
    table.add_row("pairs without a score", str(result.missing))
    table.add_row("next", f"srecycle select --workdir {workdir} --student {spec.key}")
    console().print(table)
