"""Options shared by several commands, so every command spells them the same way, and their summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; warnings and errors only.")]
Student = Annotated[
    str,
    typer.Option(
        "--student",
        help="Student: a students-table key (e.g. smollm2-135m, llama2-7b), a Hub id, a folder or a .gguf file.",
    ),
]
Template = Annotated[
    str | None,
    typer.Option("--template", help="Prompt format: alpaca, vicuna, wizardlm, none or chat. Default: the student's."),
]
MaxLength = Annotated[int, typer.Option("--max-length", min=8, help="Token limit per scored sequence (BOS included).")]
Dtype = Annotated[
    str | None, typer.Option("--dtype", help="bfloat16 (default; losses reduced in fp32) or float32 (exact, slower).")
]
Scoring = Annotated[
    str | None,
    typer.Option(
        "--scoring",
        help="Token layout of the scores: reference (exactly the reference authors' script; alpaca, vicuna, "
        "wizardlm single-turn rows) or split (the project's; any template, chat rows). Default: the student's, "
        "else reference where it exists, else split.",
    ),
]
BatchTokens = Annotated[
    int | None,
    typer.Option("--batch-tokens", min=16, help="Padded tokens per forward pass. Default: 8192 CPU, 65536 GPU."),
]
StudentsFile = Annotated[
    Path | None,
    typer.Option("--students-file", help="A TOML file of extra students (key -> model, revision, template, dtype)."),
]
SkipInvalid = Annotated[
    bool, typer.Option("--skip-invalid", help="Drop invalid source rows (reported) instead of stopping at the first.")
]
Teacher = Annotated[
    str,
    typer.Option(
        "--teacher",
        help="Teacher: a server URL (http://host:8080 for TGI, http://host:port/v1 for OpenAI-compatible; "
        "comma-separated to share load) or local[:MODEL] for the in-process default (SmolLM2).",
    ),
]
MaxNewTokens = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens",
        min=1,
        help="Output budget per teacher call. Default: what the server's context leaves after the prompt, at most "
        "2048 (2048 when the server does not say its context; 256 for the local teacher).",
    ),
]
Workdir = Annotated[Path, typer.Option("--workdir", help="Working folder holding every stage's output and caches.")]
Gate = Annotated[
    list[str] | None,
    typer.Option(
        "--gate",
        help="Set a quality-gate threshold, NAME=VALUE (repeatable): max_repeats, min_repeat_chars, "
        "max_compression, min_compression_chars, echo_min_words, echo_share. A change re-judges the stored "
        "teacher answers without calling the teacher (build: pass the same --teacher).",
    ),
]
GateOff = Annotated[
    list[str] | None,
    typer.Option(
        "--gate-off", help="Turn a quality gate off (repeatable): scaffold_leak, echo, degenerate, cut_off or empty."
    ),
]


def summary_table(title: str, *columns: str) -> Any:  # -> rich.table.Table (imported when a command runs)
    """A command's summary: a table with these columns, or with none, rows only and no header."""
    from rich.table import Table

    table = Table(title=title, show_header=bool(columns))
    for column in columns:
        table.add_column(column)
    return table


# How the teacher client talks to its servers (srecycle reflect and build): TeacherClient's fields.
Concurrency = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        min=1,
        help="Requests in flight per server (default: the server's /info, else 16); local: batch size.",
    ),
]
Api = Annotated[
    str, typer.Option("--api", help="chat (/v1/chat/completions, any server) or generate (TGI's native route).")
]
TeacherTokenizer = Annotated[
    str | None,
    typer.Option("--tokenizer", help="The teacher's tokenizer (students key, Hub id, folder): exact lengths."),
]
TeacherName = Annotated[
    str | None, typer.Option("--teacher-name", help="Model name to cache answers under, if the server has none.")
]
Timeout = Annotated[
    float, typer.Option("--timeout", min=0.001, help="Seconds to wait for one answer before retrying it.")
]
WaitReady = Annotated[
    float,
    typer.Option(
        "--wait-ready", min=0.001, help="Seconds to wait at start for the server to answer (it may be loading)."
    ),
]
MaxRetries = Annotated[
    int, typer.Option("--max-retries", min=0, help="Retries per request (429, 5xx, timeouts, lost connections).")
]
MaxRetryTime = Annotated[
    float,
    typer.Option("--max-retry-time", min=1.0, help="Seconds one request may take, every attempt and wait included."),
]
