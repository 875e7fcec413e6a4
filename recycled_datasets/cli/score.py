"""``srecycle score``: IFD and r-IFD of every row of a source, for one student."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from recycled_datasets.cli.options import (
    BatchTokens,
    Dtype,
    MaxLength,
    Quiet,
    Scoring,
    SkipInvalid,
    Student,
    StudentsFile,
    Template,
)


def score(
    input: Annotated[
        Path, typer.Argument(help="Source rows: Alpaca/WizardLM JSON, JSONL, parquet, Hub-layout folder.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the scores (parquet).")],
    student: Student = "smollm2-135m",
    template: Template = None,
    max_length: MaxLength = 2048,
    dtype: Dtype = None,
    scoring: Scoring = None,
    batch_tokens: BatchTokens = None,
    students_file: StudentsFile = None,
    skip_invalid: SkipInvalid = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Score only the first N valid rows.")] = None,
    quiet: Quiet = False,
) -> None:
    """Score every row with the student: IFD, r-IFD, the four raw losses and token counts (one row per input row).

    Resumable: finished work is checkpointed next to OUTPUT, and a rerun after a crash continues from it.
    Runs on several devices under `torchrun --nproc-per-node N $(which srecycle) score ...`.
    """
    from recycled_datasets.progress import set_quiet, setup_logging
    from recycled_datasets.scoring import ScoreConfig, dist_info

    dist = dist_info()
    if not dist.main:  # under torchrun only the first rank reports
        setup_logging(quiet=True)
        set_quiet(True)

    from recycled_datasets.errors import ConfigError
    from recycled_datasets.locking import locked
    from recycled_datasets.models import resolve_student
    from recycled_datasets.safety import check_distinct
    from recycled_datasets.sources import read_source

    check_distinct(output, [input])
    if output.is_dir():  # found now, not after hours of scoring
        raise ConfigError(f"--output {output} is a folder; give the path of the parquet file to write")
    spec = resolve_student(student, template=template, dtype=dtype, students_file=students_file)
    data = read_source(input, skip_invalid=skip_invalid, limit=limit)
    parts = output.parent / f".{output.name}.parts"
    config = ScoreConfig(max_length=max_length, batch_tokens=batch_tokens, cache_dir=parts, scoring=scoring)
    # Only the first rank of a torchrun holds the output's lock.
    with locked(output.parent, what="score output", name=f".{output.name}.lock") if dist.main else nullcontext():
        _score(data, spec, output, config, started=time.monotonic())


def _score(data, spec, output: Path, config, *, started: float) -> None:  # noqa: ANN001
    """Score, write OUTPUT atomically, drop the checkpoints, print the summary (rank 0 only)."""
    from recycled_datasets.records import Pair
    from recycled_datasets.scoring import score_pairs, scoring_of
    from recycled_datasets.workdir.schema import row_scores_schema
    from recycled_datasets.workdir.tables import write_frame

    pairs = [Pair(r.instruction, r.input, r.output, r.context) for r in data.rows]
    frame = score_pairs(pairs, spec, config)
    if frame is None:  # not rank 0 of a distributed run
        return
    import polars as pl

    frame = pl.concat(
        [pl.DataFrame({"id": [r.id for r in data.rows], "source_index": [r.index for r in data.rows]}), frame],
        how="horizontal",
    )
    write_frame(frame, output, row_scores_schema())
    import shutil

    shutil.rmtree(config.cache_dir, ignore_errors=True)
    label = f"{spec.template} template, {scoring_of(config, spec, spec.template, pairs)} scoring"
    _summary(frame, output, spec.key, label, len(data.invalid), time.monotonic() - started)


def _summary(frame, output: Path, student: str, template: str, skipped: int, seconds: float) -> None:  # noqa: ANN001
    import polars as pl
    from rich.table import Table

    from recycled_datasets.progress import console

    ok = frame.filter(pl.col("status") == "ok")
    table = Table(title=f"scores of {student} ({template}) -> {output}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows scored", str(frame.height))
    table.add_row("rows ok", str(ok.height))
    table.add_row("rows missing a score", str(frame.height - ok.height))
    if skipped:
        table.add_row("invalid rows skipped", str(skipped))
    if ok.height:
        for name in ("ifd", "rifd"):
            q = [ok[name].quantile(p) for p in (0.1, 0.5, 0.9)]
            table.add_row(f"{name} p10 / p50 / p90", " / ".join(f"{v:.3f}" for v in q))
        table.add_row("ifd < 1", f"{(ok['ifd'] < 1).sum()} of {ok.height}")
    table.add_row("seconds", f"{seconds:.1f}")
    console().print(table)
    reasons = frame.filter(pl.col("reason").is_not_null())["reason"].value_counts(sort=True)
    for reason, count in reasons.iter_rows():
        console().print(f"missing: {count} x {reason}")
