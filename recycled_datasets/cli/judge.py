"""``srecycle judge``: two answer files judged pair by pair, in both orders, into a report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recycled_datasets.cli.options import MaxRetries, Quiet

if TYPE_CHECKING:
    from recycled_datasets.evaluation.report import Report

Judge = Annotated[
    str,
    typer.Option(
        "--judge",
        help="The judge: a server URL (http://host:port/v1 OpenAI-compatible, http://host:8080 TGI; comma-separated "
        "to share load) or local[:MODEL] for an in-process model.",
    ),
]
Output = Annotated[Path, typer.Option("--output", "-o", help="Folder for results.json, pairs.parquet and the plot.")]
Concurrency = Annotated[
    int | None,
    typer.Option("--concurrency", min=1, help="Judge requests in flight per server (default: /info, else 16)."),
]
TestSetNames = Annotated[
    list[str] | None, typer.Option("--test-sets", help="Judge only these test sets (repeatable). Default: all.")
]
JudgeMaxNewTokens = Annotated[
    int | None,
    typer.Option("--max-new-tokens", min=1, help="Verdict budget in tokens (default 512; 64 for a local judge)."),
]
JudgeName = Annotated[
    str | None, typer.Option("--judge-name", help="Model name to store verdicts under, if the server reports none.")
]
BackoffBase = Annotated[
    float, typer.Option("--backoff-base", min=0.0, help="First retry delay in seconds (doubles per retry, jittered).")
]


def show(report: Report, quiet: bool) -> None:
    """The results table and where the files went (nothing with --quiet)."""
    from recycled_datasets.evaluation.report import results_table
    from recycled_datasets.progress import console

    if not quiet:
        out = console()
        out.print(results_table(report.results))
        out.print(f"written: {report.results_path}, {report.pairs_path.name}, {report.plot_path.name}")


def judge(
    a: Annotated[
        Path, typer.Argument(help="Answers of model A (what `srecycle generate` writes, or JSON / JSONL / parquet).")
    ],
    b: Annotated[Path, typer.Argument(help="Answers of model B, paired with A's on (test_set, instruction).")],
    judge: Judge,
    output: Output,
    concurrency: Concurrency = None,
    test_sets: TestSetNames = None,
    max_new_tokens: JudgeMaxNewTokens = None,
    judge_name: JudgeName = None,
    store: Annotated[
        Path | None, typer.Option("--store", help="The judge's answer store (default: OUTPUT/judge).")
    ] = None,
    max_retries: MaxRetries = 8,
    backoff_base: BackoffBase = 1.0,
    quiet: Quiet = False,
) -> None:
    """Judge A against B on every shared question, in both orders; print wins, ties, losses and the win score.

    A server that wants a bearer token gets $SRECYCLE_TEACHER_TOKEN, as the teacher does. A rerun sends only
    what the judge's store does not hold yet.
    """
    from recycled_datasets.evaluation.evaluate import judge_files
    from recycled_datasets.evaluation.judge import JudgeConfig

    config = JudgeConfig(
        judge=judge,
        output_dir=output,
        store_dir=store,
        concurrency=concurrency,
        test_sets=test_sets or None,
        max_new_tokens=max_new_tokens,
        teacher_name=judge_name,
        max_retries=max_retries,
        backoff_base=backoff_base,
        progress=not quiet,
    )
    show(judge_files(a, b, config), quiet)
