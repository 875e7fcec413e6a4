"""``srecycle build``, ``srecycle select`` and ``srecycle import-reflections``.

``build`` runs reflect (cached) -> score (cached) -> select -> DIR/dataset for one student; ``select``
re-cuts a subset from cached scores; ``import-reflections`` fills a workdir from the reference authors'
published variants so no teacher is needed at all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from recycled_datasets.cli.options import (
    Api,
    BatchTokens,
    Concurrency,
    Dtype,
    Gate,
    GateOff,
    MaxLength,
    MaxNewTokens,
    MaxRetries,
    MaxRetryTime,
    Quiet,
    Scoring,
    SkipInvalid,
    Student,
    StudentsFile,
    TeacherName,
    TeacherTokenizer,
    Template,
    Timeout,
    WaitReady,
    Workdir,
    summary_table,
)
from recycled_datasets.cli.reflect import PromptInstruction, PromptResponse, PromptVersion
from recycled_datasets.progress import console

Source = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="alpaca or wizardlm (the public Hub sets), sample (the bundled 30 rows), or a JSON/JSONL/parquet "
        "file, folder (Hub layout or save_to_disk) or Hub id (ORG/NAME[:SPLIT]) of Alpaca or chat rows (messages, "
        "ShareGPT conversations). Default: the rows already in DIR/reflections.parquet.",
    ),
]
OptionalTeacher = Annotated[
    str | None,
    typer.Option(
        "--teacher",
        help="Teacher for rows without reflections: a server URL (TGI http://host:8080, OpenAI-compatible "
        "http://host:port/v1; comma-separated to share load) or local[:MODEL]. Not contacted when the workdir "
        "already holds every row's reflections.",
    ),
]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N valid source rows.")]
Name = Annotated[str | None, typer.Option("--name", help="Config name (key) of the student's subset.")]
KeepUnreflected = Annotated[
    bool,
    typer.Option(
        "--keep-unreflected", help="Also keep rows whose final variant is ins or ori (paper mode drops them)."
    ),
]
TopK = Annotated[int | None, typer.Option("--top-k", min=1, help="Keep only the k kept rows with the highest IFD.")]
TopP = Annotated[
    float | None, typer.Option("--top-p", min=0.0, max=100.0, help="Keep only the top P percent of kept rows by IFD.")
]
SelectStudent = Annotated[str, typer.Option("--student", help="Key of a student already built in the workdir.")]


def _print_selection(report, workdir: Path, key: str) -> None:
    from recycled_datasets.selection import report_table
    from recycled_datasets.workdir import Workdir as Files

    out = console()
    out.print(report_table(report))
    out.print(f"subset: {Files(workdir).student(key).subset} ({report.rows_kept} rows)")


def _teacher_rows(table, stats) -> None:
    """The teacher's part of the build summary, from the reflect stage's stats."""
    calls, rejudged = stats.teacher_calls, stats.rejudge_calls
    table.add_row("reflections", f"{stats.made} new by {stats.teacher}, {stats.reused} reused")
    if calls is not None:
        table.add_row(
            "teacher calls",
            f"{calls.sent} sent, {calls.cached} from the store, {calls.fallbacks} fallbacks, "
            f"{calls.failures} refused ({calls.seconds:.0f} s)",
        )
        refused = ", ".join(f"{r} {n}" for r, n in sorted(calls.rejections.items())) or "none"
        table.add_row("replies refused, per reason (attempts)", refused)
    elif rejudged is None:
        table.add_row("teacher calls", "none (every row already had its reflections)")
    if rejudged is not None:
        table.add_row(
            "re-judged (gates changed)",
            f"{stats.rejudged} rows from {rejudged.cached} stored answers, {rejudged.sent} teacher calls",
        )


def build(
    workdir: Workdir,
    source: Source = None,
    student: Student = "smollm2-135m",
    teacher: OptionalTeacher = None,
    max_new_tokens: MaxNewTokens = None,
    limit: Limit = None,
    name: Name = None,
    template: Template = None,
    students_file: StudentsFile = None,
    keep_unreflected: KeepUnreflected = False,
    top_k: TopK = None,
    top_p: TopP = None,
    skip_invalid: SkipInvalid = False,
    dtype: Dtype = None,
    scoring: Scoring = None,
    max_length: MaxLength = 2048,
    batch_tokens: BatchTokens = None,
    gate: Gate = None,
    gate_off: GateOff = None,
    prompt_instruction: PromptInstruction = None,
    prompt_response: PromptResponse = None,
    prompt_version: PromptVersion = None,
    concurrency: Concurrency = None,
    api: Api = "chat",
    tokenizer: TeacherTokenizer = None,
    teacher_name: TeacherName = None,
    timeout: Timeout = 300.0,
    wait_ready: WaitReady = 300.0,
    max_retries: MaxRetries = 8,
    max_retry_time: MaxRetryTime = 1800.0,
    quiet: Quiet = False,
) -> None:
    """Build one student's sRecycled subset: reflect (cached) -> score (cached) -> select -> DIR/dataset.

    --concurrency, --api, --tokenizer, --teacher-name, --timeout, --wait-ready, --max-retries and
    --max-retry-time set the teacher client as in srecycle reflect.
    """
    from recycled_datasets.builders import SRecycledConfig, run_student
    from recycled_datasets.models import resolve_student
    from recycled_datasets.teacher import TeacherClient
    from recycled_datasets.workdir import check_config_name

    started = time.monotonic()
    # The same path as the datasets builders: their config, their stage runner (which holds the locks).
    key = check_config_name(name if name is not None else resolve_student(student, students_file=students_file).key)
    client = TeacherClient(concurrency, api, tokenizer, teacher_name, timeout, wait_ready, max_retries, max_retry_time)
    config = SRecycledConfig(
        name=key,
        workdir=workdir,
        source=source,
        teacher=teacher,
        student=student,
        students_file=students_file,
        template=template,
        mode="keep-unreflected" if keep_unreflected else "paper",
        top_k=top_k,
        top_p=top_p,
        limit=limit,
        max_new_tokens=max_new_tokens,
        skip_invalid=skip_invalid,
        max_length=max_length,
        dtype=dtype,
        scoring=scoring,
        batch_tokens=batch_tokens,
        gates=tuple(gate or ()),
        gates_off=tuple(gate_off or ()),
        prompt_instruction=prompt_instruction,
        prompt_response=prompt_response,
        prompt_version=prompt_version,
        teacher_client=client,
    )
    result = run_student(config, release=True)
    if "select" not in result.stats:  # another rank of torchrun: rank 0 reports
        return
    _print_selection(result.report, workdir, result.student)
    table = summary_table(f"srecycle build: {result.student}", "stage", "result")
    table.add_row("source rows", f"{result.rows} ({result.skipped_rows} invalid skipped)")
    _teacher_rows(table, result.stats["reflect"])
    reasons = result.stats["reflect"].fallbacks
    table.add_row(
        "teacher text refused",
        ", ".join(f"{r} {n}" for r, n in reasons.items()) + " (variants)" if reasons else "none",
    )
    scores = result.stats["score"]
    table.add_row("scores", f"{scores.rows} pairs ({'reused' if scores.reused else 'scored'})")
    table.add_row("subset", f"{result.report.rows_kept} of {result.rows} rows")
    table.add_row("dataset", str(result.dataset))
    table.add_row("time", f"{time.monotonic() - started:.1f} s")
    console().print(table)


def select(
    workdir: Workdir,
    student: SelectStudent,
    keep_unreflected: KeepUnreflected = False,
    top_k: TopK = None,
    top_p: TopP = None,
    quiet: Quiet = False,
) -> None:
    """Select a student's subset again from its cached scores (no student, no teacher), and refresh DIR/dataset."""
    from recycled_datasets.errors import InputError
    from recycled_datasets.locking import locked
    from recycled_datasets.selection import SelectionConfig
    from recycled_datasets.stages import ReleaseStage, SelectStage
    from recycled_datasets.workdir import Workdir as Files

    config = SelectionConfig(mode="keep-unreflected" if keep_unreflected else "paper", top_k=top_k, top_p=top_p)
    if not Path(workdir).is_dir():
        raise InputError("no such workdir (no reflections.parquet): run srecycle build first", path=str(workdir))
    with locked(workdir, what="workdir"):
        files = Files(workdir)
        report = SelectStage(files, student, config).select().report
        dataset = ReleaseStage(files).run().root
    _print_selection(report, workdir, student)
    console().print(f"dataset: {dataset}")


_FILES = {  # import-reflections' four files: split -> what it holds
    "origin": "The source rows the reference reflected",
    "reflect_instruction": "The instruction reflection: reflect_instruction_postprocess.py's output (or mid file)",
    "reflect_response": "The response reflection of origin (reflect_response_postprocess.py's mid file)",
    "reflect_both": "The response reflection of the instruction reflection's rows (its mid file)",
}


def _file_option(split: str) -> Any:
    return typer.Option(
        f"--{split.replace('_', '-')}", help=f"{_FILES[split]} (instead of SOURCE; give all four files)."
    )


def import_reflections(
    workdir: Workdir,
    source: Annotated[
        str | None,
        typer.Argument(
            help="The reference authors' set: a Hub id (e.g. their Reflect_Alpaca_All) or a local folder holding "
            "the splits origin, reflect_instruction, reflect_response and reflect_both (one file each, named by "
            "split). Or leave it out and give the four files their scripts wrote with the options below."
        ),
    ] = None,
    origin: Annotated[Path | None, _file_option("origin")] = None,
    reflect_instruction: Annotated[Path | None, _file_option("reflect_instruction")] = None,
    reflect_response: Annotated[Path | None, _file_option("reflect_response")] = None,
    reflect_both: Annotated[Path | None, _file_option("reflect_both")] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace the reflections the workdir already holds (its students go stale)."),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Fill a workdir with the reference authors' published variants, so students build with no teacher.

    Reads their published sets and the files their reflection scripts write (docs/method.md, section 8). A
    workdir that already holds other reflections is left alone unless --force.
    """
    from recycled_datasets.locking import locked
    from recycled_datasets.stages.reference import import_reflections as run_import

    named = zip(_FILES, (origin, reflect_instruction, reflect_response, reflect_both), strict=True)
    files = {split: path for split, path in named if path is not None}
    with locked(workdir, what="workdir"):
        result = run_import(source, workdir, files=files, force=force)
    table = summary_table("srecycle import-reflections", "what", "value")
    table.add_row("source", result.source)
    table.add_row("rows", str(result.rows))
    for variant, n in result.unchanged.items():
        table.add_row(f"{variant} equal to the original", str(n))
    if result.already:
        table.add_row("written", f"nothing: {Path(workdir) / 'reflections.parquet'} already holds these reflections")
    else:
        replaced = " (replaced the reflections it held)" if result.replaced else ""
        table.add_row("written", f"{Path(workdir) / 'reflections.parquet'}{replaced}")
    table.add_row("next", f"srecycle build --workdir {workdir} --student KEY")
    console().print(table)
