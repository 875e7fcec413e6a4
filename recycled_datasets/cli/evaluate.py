"""``srecycle evaluate``: answers of a model and a baseline (cached), then the judge, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recycled_datasets.cli.generate import BatchSize, GenMaxNewTokens, Limit, TestSets
from recycled_datasets.cli.judge import Concurrency, Judge, JudgeName, show
from recycled_datasets.cli.options import Quiet, StudentsFile


def evaluate(
    model: Annotated[
        str,
        typer.Option("--model", help="The model to evaluate: a srecycle finetune checkpoint, key, Hub id or folder."),
    ],
    baseline: Annotated[
        str,
        typer.Option(
            "--baseline", help="The model to compare against (e.g. the same base trained on the source data)."
        ),
    ],
    test_sets: TestSets,
    judge: Judge,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for both answer files, their stores and the judge's report.")
    ],
    model_server: Annotated[
        str | None,
        typer.Option("--model-server", help="A server that serves --model (see `srecycle generate --server`)."),
    ] = None,
    baseline_server: Annotated[
        str | None, typer.Option("--baseline-server", help="A server that serves --baseline.")
    ] = None,
    max_new_tokens: GenMaxNewTokens = 1024,
    limit: Limit = None,
    batch_size: BatchSize = 8,
    judge_max_new_tokens: Annotated[
        int | None, typer.Option("--judge-max-new-tokens", min=1, help="Verdict budget (default 512; local 64).")
    ] = None,
    concurrency: Concurrency = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Judge only these test sets (repeatable). Default: all.")
    ] = None,
    judge_name: JudgeName = None,
    students_file: StudentsFile = None,
    quiet: Quiet = False,
) -> None:
    """Generate the answers of --model and --baseline (each reused when already there), then judge them."""
    from recycled_datasets.evaluation.evaluate import evaluate as run_evaluate
    from recycled_datasets.evaluation.generate import GenerateConfig
    from recycled_datasets.evaluation.judge import JudgeConfig

    def answers(name: str, which: str, server: str | None) -> GenerateConfig:
        return GenerateConfig(
            model=name,
            test_sets=test_sets,
            output=output / "answers" / f"{which}.parquet",
            server=server,
            max_new_tokens=max_new_tokens,
            limit=limit,
            batch_size=batch_size,
            students_file=students_file,
            progress=not quiet,
        )

    judge_config = JudgeConfig(
        judge=judge,
        output_dir=output,
        concurrency=concurrency,
        test_sets=only or None,
        max_new_tokens=judge_max_new_tokens,
        teacher_name=judge_name,
        progress=not quiet,
    )
    result = run_evaluate(
        answers(model, "model", model_server), answers(baseline, "baseline", baseline_server), judge_config
    )
    show(result.report, quiet)
