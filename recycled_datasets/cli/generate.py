"""``srecycle generate``: a model's answers to the test sets, in its own prompt format, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recycled_datasets.cli.options import Quiet, StudentsFile, Template, summary_table

TestSets = Annotated[
    list[Path],
    typer.Option(
        "--test-sets",
        help="A folder of test files (the paper's five *_test_set.jsonl) or the JSON / JSONL / parquet files; "
        "repeatable.",
    ),
]
Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="A server that serves the model (http://host:port/v1 OpenAI-compatible, http://host:8080 TGI) "
        "instead of loading it here.",
    ),
]
Api = Annotated[
    str,
    typer.Option(
        "--api",
        help="With --server: chat (one user turn, the server's chat template) or generate (TGI, any --template).",
    ),
]
GenMaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Answer budget in tokens.")]
Limit = Annotated[
    int | None, typer.Option("--limit", min=1, help="Answer only the first N questions of each test set.")
]
BatchSize = Annotated[
    int, typer.Option("--batch-size", min=1, help="Local: sequences per generate call; --server: requests in flight.")
]


def generate(
    test_sets: TestSets,
    output: Annotated[Path, typer.Option("--output", "-o", help="The answers file (.parquet).")],
    model: Annotated[
        str | None,
        typer.Argument(
            help="A srecycle finetune checkpoint (its template is read from it), a students key, a Hub id, a folder "
            "or a .gguf; with --server, an optional name to record."
        ),
    ] = None,
    template: Template = None,
    server: Server = None,
    api: Api = "chat",
    max_new_tokens: GenMaxNewTokens = 1024,
    limit: Limit = None,
    batch_size: BatchSize = 8,
    store: Annotated[
        Path | None, typer.Option("--store", help="Answer store folder (default: OUTPUT_STEM.store beside --output).")
    ] = None,
    students_file: StudentsFile = None,
    quiet: Quiet = False,
) -> None:
    """Answer every test question with MODEL (greedy, its own prompt format); a rerun generates only the rest."""
    from recycled_datasets.evaluation.generate import GenerateConfig, generate_answers
    from recycled_datasets.progress import console

    config = GenerateConfig(
        model=model,
        test_sets=test_sets,
        output=output,
        template=template,
        server=server,
        api=api,
        max_new_tokens=max_new_tokens,
        limit=limit,
        batch_size=batch_size,
        store_dir=store,
        students_file=students_file,
        progress=not quiet,
    )
    result = generate_answers(config)
    table = summary_table("srecycle generate")
    table.add_row("model", result.model)
    table.add_row("template", result.template)
    table.add_row("answers", str(result.rows))
    table.add_row("generated / from the store", f"{result.generated} / {result.from_store}")
    table.add_row("time", f"{result.seconds:.1f} s")
    table.add_row("written", str(result.path))
    if not quiet:
        console().print(table)
