"""``srecycle reflect``: the teacher pass over a source file, resumable, into a reflections parquet."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recycled_datasets.cli.options import (
    Api,
    Concurrency,
    Gate,
    GateOff,
    MaxNewTokens,
    MaxRetries,
    MaxRetryTime,
    Quiet,
    SkipInvalid,
    Teacher,
    TeacherName,
    TeacherTokenizer,
    Timeout,
    WaitReady,
)

if TYPE_CHECKING:
    from recycled_datasets.teacher import ReflectPlan, ReflectResult

_PROMPT_FILE_HELP = (
    " A plain-text file is the user turn's template; a .toml file may also hold a system message and the forms "
    "for rows with an input (keys user, system, user_with_input, system_with_input; see the README)."
)
PromptInstruction = Annotated[
    Path | None,
    typer.Option("--prompt-instruction", help="Your instruction-reflection prompt file." + _PROMPT_FILE_HELP),
]
PromptResponse = Annotated[
    Path | None, typer.Option("--prompt-response", help="Your response-reflection prompt file." + _PROMPT_FILE_HELP)
]
PromptVersion = Annotated[
    str | None,
    typer.Option("--prompt-version", help="Name to cache answers of your prompts under (default: a hash of them)."),
]


def reflect(
    input: Annotated[str, typer.Argument(help="Source rows: JSON, JSONL, parquet, a Hub-layout folder or Hub id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the reflections table (.parquet).")],
    teacher: Teacher = "local",
    store: Annotated[
        Path | None,
        typer.Option("--store", help="Teacher answer store folder (default: a 'teacher' folder beside --output)."),
    ] = None,
    concurrency: Concurrency = None,
    max_new_tokens: MaxNewTokens = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Reflect only the first N rows.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the number of calls and a token estimate; send nothing.")
    ] = False,
    skip_invalid: SkipInvalid = False,
    api: Api = "chat",
    tokenizer: TeacherTokenizer = None,
    teacher_name: TeacherName = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 is greedy decoding.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Generation seed sent with every request.")] = 0,
    prompt_instruction: PromptInstruction = None,
    prompt_response: PromptResponse = None,
    prompt_version: PromptVersion = None,
    timeout: Timeout = 300.0,
    wait_ready: WaitReady = 300.0,
    max_retries: MaxRetries = 8,
    max_retry_time: MaxRetryTime = 1800.0,
    retry_rejected: Annotated[
        bool, typer.Option("--retry-rejected", help="Resend requests the server refused (422) in an earlier run.")
    ] = False,
    gate: Gate = None,
    gate_off: GateOff = None,
    quiet: Quiet = False,
) -> None:
    """Ask the teacher for the ins, res and both variants of every source row; reruns reuse stored answers.

    A server that wants a bearer token gets $SRECYCLE_TEACHER_TOKEN. $HF_TOKEN (or your stored Hugging Face
    login) is sent only to Hugging Face hosts over https, never to your own servers.
    """
    from recycled_datasets.errors import ConfigError
    from recycled_datasets.progress import console
    from recycled_datasets.safety import check_distinct
    from recycled_datasets.stages.reflect import reflections_meta
    from recycled_datasets.stages.source import load_source
    from recycled_datasets.teacher import ReflectConfig, TeacherClient, plan_rows, reflect_rows
    from recycled_datasets.teacher.gates import GateConfig
    from recycled_datasets.workdir.tables import write_reflections_file

    if output.suffix.lower() != ".parquet":
        raise ConfigError(f"--output {output} must end in .parquet")
    check_distinct(output, [input])
    client = TeacherClient(concurrency, api, tokenizer, teacher_name, timeout, wait_ready, max_retries, max_retry_time)
    config = ReflectConfig(
        teacher=teacher,
        store_dir=store if store is not None else output.parent / "teacher",
        max_new_tokens=max_new_tokens,
        limit=limit,
        temperature=temperature,
        seed=seed,
        instruction_prompt=prompt_instruction,
        response_prompt=prompt_response,
        prompt_version=prompt_version,
        retry_rejected=retry_rejected,
        client=client,
        gates=GateConfig.from_options(gate or (), gate_off or ()),
    )
    source = load_source(input, skip_invalid=skip_invalid, limit=limit)
    if dry_run:
        console().print(_plan_table(plan_rows(source.rows, config)))
        return

    from recycled_datasets.chat import with_context
    from recycled_datasets.locking import locked

    with locked(config.store_dir, what="answer store"):
        result = reflect_rows(source.rows, config)
        frame = with_context(result.table, source.rows[: result.table.height])
        meta = reflections_meta(
            frame,
            teacher=result.teacher_id,
            teacher_revision=result.teacher_revision,
            prompt_version=result.prompt_version,
            source=source.name,
            license=source.license,
            gates=config.gates.as_dict(),
            max_new_tokens=config.output_budget,
        )
        write_reflections_file(output, frame, meta)
    console().print(_result_table(result, output))


def _table(title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    return table


def _plan_table(plan: ReflectPlan) -> Any:
    table = _table("srecycle reflect (dry run)")
    table.add_row("rows", str(plan.rows))
    table.add_row("teacher", plan.teacher_id)
    table.add_row("prompt version", plan.prompt_version)
    table.add_row("calls to send", str(plan.calls))
    table.add_row("answers already stored", str(plan.cached) if plan.cache_checked else "not checked")
    table.add_row("prompt tokens (estimate)", f"~{plan.prompt_tokens:,}")
    table.add_row("output tokens (at most)", f"{plan.max_output_tokens:,}")
    return table


def _result_table(result: ReflectResult, output: Path) -> Any:
    table = _table("srecycle reflect")
    stats = result.stats
    status_counts = {v: result.table.get_column(f"{v}_status").value_counts().rows() for v in ("ins", "res", "both")}
    table.add_row("rows", str(stats.rows))
    table.add_row("teacher", result.teacher_id)
    table.add_row("prompt version", result.prompt_version)
    table.add_row("requests sent", f"{stats.sent} ({stats.retries} retries{_reasons(stats.retry_reasons)})")
    table.add_row("answers from the store", str(stats.cached))
    table.add_row("unusable replies asked again", str(stats.parse_retries))
    refused = ", ".join(f"{r} {n}" for r, n in sorted(stats.rejections.items())) or "none"
    table.add_row("replies refused, per reason (attempts)", refused)
    for variant, counts in status_counts.items():
        table.add_row(f"{variant} status", ", ".join(f"{status} {n}" for status, n in sorted(counts)))
    table.add_row("tokens (prompt / output)", f"{stats.prompt_tokens:,} / {stats.completion_tokens:,}")
    table.add_row("time", f"{stats.seconds:.1f} s")
    table.add_row("written", f"{output} (+ {output.with_suffix('.json').name})")
    return table


def _reasons(reasons: dict[str, int]) -> str:
    return (": " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))) if reasons else ""
