"""``srecycle demo``: the whole job on the bundled sample with the embedded model, on CPU, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recycled_datasets.cli.options import MaxNewTokens, Quiet

DEMO_STUDENT = "smollm2-135m"


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo writes every stage's output.")] = Path(
        ".demo"
    ),
    rows: Annotated[
        int | None, typer.Option("--rows", min=1, help="Use only the first N rows of the bundled sample (30).")
    ] = None,
    max_new_tokens: MaxNewTokens = 192,
    show: Annotated[int, typer.Option("--show", min=0, help="Rows of the loaded subset to print.")] = 5,
    paper_mode: Annotated[
        bool,
        typer.Option(
            "--paper-mode/--keep-unreflected",
            help="Paper mode keeps only rows whose final variant is res or both. The demo keeps ins and ori "
            "finals too by default: the 135M embedded teacher rarely writes a usable reflection.",
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Run the main job on the embedded default, end to end, with no GPU and no Hub access.

    The bundled sample -> reflections by SmolLM2 in-process -> SmolLM2 scores -> selection -> a Hub-layout
    repo folder with card and plots -> load_dataset(folder, "smollm2-135m"), whose rows are printed back.
    Reruns reuse every finished stage in --workdir.
    """
    from recycled_datasets.progress import set_quiet, setup_logging

    setup_logging(quiet=quiet)
    set_quiet(quiet)

    import time

    from rich.panel import Panel
    from rich.table import Table

    from recycled_datasets.errors import RecycledError
    from recycled_datasets.models import resolve_student
    from recycled_datasets.pipeline import BuildConfig, build
    from recycled_datasets.progress import console
    from recycled_datasets.selection import SelectionConfig, report_table

    out = console()
    started = time.monotonic()
    spec = resolve_student(DEMO_STUDENT)
    out.print(f"[bold]srecycle demo[/bold]: teacher and student = {spec.hub_id} (embedded, CPU); workdir {workdir}")
    from recycled_datasets.locking import locked_all

    with locked_all((workdir, "workdir"), (workdir / "teacher", "answer store")):
        result = build(
            BuildConfig(
                workdir=workdir,
                student=spec,
                source="sample",
                teacher="local",
                max_new_tokens=max_new_tokens,
                limit=rows,
                selection=SelectionConfig(mode="paper" if paper_mode else "keep-unreflected"),
            )
        )
    out.print(report_table(result.selection.report))

    import datasets

    from recycled_datasets.hf_datasets import load_dataset

    datasets.disable_progress_bars()
    folder = result.dataset
    if result.selection.report.rows_kept == 0:
        raise RecycledError(
            f"no row of the sample passed the selection for {DEMO_STUDENT}, so its config is empty; "
            "the report above says why (rerun with --keep-unreflected to keep unreflected rows)"
        )
    subset = load_dataset(str(folder), DEMO_STUDENT, split="train")
    call = f"load_dataset({str(folder)!r}, {DEMO_STUDENT!r})"
    out.print(f"\n{call} -> {subset.num_rows} rows, columns {subset.column_names}")
    for i, row in enumerate(subset.select(range(min(show, subset.num_rows)))):
        body = f"[bold]instruction[/bold]: {row['instruction']}\n"
        if row["input"]:
            body += f"[bold]input[/bold]: {row['input']}\n"
        body += f"[bold]output[/bold]: {row['output']}"
        title = f"row {i}: id {row['id']}  variant {row['variant']}  IFD {row['ifd']:.3f}  r-IFD {row['rifd']:.3f}"
        out.print(Panel(body, title=title, title_align="left"))

    reflected = result.reflections
    teacher_stats = reflected.teacher_stats
    summary = Table(title="srecycle demo: summary")
    summary.add_column("step")
    summary.add_column("result", justify="right")
    summary.add_row("source rows (bundled sample)", str(result.rows))
    summary.add_row("reflections (4 variants per row)", str(workdir / "reflections.parquet"))
    summary.add_row("rows reflected this run / reused", f"{reflected.reflected} / {reflected.reused}")
    if teacher_stats is not None:
        summary.add_row("teacher calls this run", str(teacher_stats.sent))
    summary.add_row("student scores", str(workdir / "students" / DEMO_STUDENT / "scores.parquet"))
    summary.add_row("rows kept for the student", f"{result.selection.report.rows_kept} of {result.rows}")
    summary.add_row("release folder (Hub layout, card, plots)", str(folder))
    summary.add_row("seconds", f"{time.monotonic() - started:.0f}")
    out.print(summary)
