"""``srecycle finetune``: train a student on its subset with the paper's recipe, one command to a checkpoint.

Option help and defaults come from :class:`recycled_datasets.finetune.FinetuneConfig`, so the two cannot drift.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recycled_datasets.cli.options import Quiet, StudentsFile, Template
from recycled_datasets.finetune import field_default, field_help

if TYPE_CHECKING:
    from rich.table import Table

    from recycled_datasets.finetune import FinetuneResult


def finetune(
    dataset: Annotated[str, typer.Option("--dataset", help=field_help("dataset"))],
    config: Annotated[str, typer.Option("--config", help=field_help("config"))],
    output: Annotated[Path, typer.Option("--output", help=field_help("output_dir"))],
    base: Annotated[str | None, typer.Option("--base", help=field_help("base_model"))] = None,
    push: Annotated[
        str | None, typer.Option("--push", help="After training, upload the checkpoint to this Hub repo (org/name).")
    ] = None,
    eval_dir: Annotated[
        Path | None,
        typer.Option("--eval", help="A `srecycle judge` output folder: its results go into the model card."),
    ] = None,
    revision: Annotated[str | None, typer.Option("--revision", help=field_help("dataset_revision"))] = None,
    template: Template = None,
    students_file: StudentsFile = None,
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", min=0.0, help=field_help("learning_rate"))
    ] = field_default("learning_rate"),
    epochs: Annotated[float, typer.Option("--epochs", min=0.0, help=field_help("epochs"))] = field_default("epochs"),
    global_batch_size: Annotated[
        int, typer.Option("--global-batch-size", min=1, help=field_help("global_batch_size"))
    ] = field_default("global_batch_size"),
    per_device_batch_size: Annotated[
        int, typer.Option("--per-device-batch-size", min=1, help=field_help("per_device_batch_size"))
    ] = field_default("per_device_batch_size"),
    max_length: Annotated[int, typer.Option("--max-length", min=8, help=field_help("max_length"))] = field_default(
        "max_length"
    ),
    warmup_ratio: Annotated[
        float, typer.Option("--warmup-ratio", min=0.0, max=1.0, help=field_help("warmup_ratio"))
    ] = field_default("warmup_ratio"),
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", min=0.0, help=field_help("weight_decay"))
    ] = field_default("weight_decay"),
    lr_scheduler: Annotated[str, typer.Option("--lr-scheduler", help=field_help("lr_scheduler_type"))] = field_default(
        "lr_scheduler_type"
    ),
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help=field_help("max_steps"))] = None,
    save_steps: Annotated[int, typer.Option("--save-steps", min=1, help=field_help("save_steps"))] = field_default(
        "save_steps"
    ),
    logging_steps: Annotated[
        int, typer.Option("--logging-steps", min=1, help=field_help("logging_steps"))
    ] = field_default("logging_steps"),
    seed: Annotated[int, typer.Option("--seed", help=field_help("seed"))] = field_default("seed"),
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help=field_help("gradient_checkpointing"))
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a student on its subset (TRL SFT, loss on the response only); reruns resume; --push uploads."""
    from recycled_datasets.finetune import FinetuneConfig
    from recycled_datasets.finetune import finetune as run_finetune
    from recycled_datasets.progress import console, set_quiet, setup_logging

    # Under accelerate/torchrun every process runs this command; only the first one reports.
    if int(os.environ.get("RANK", "0")) != 0:
        quiet = True
        setup_logging(quiet=True)
        set_quiet(True)
    settings = FinetuneConfig(
        dataset=dataset,
        config=config,
        output_dir=output,
        base_model=base,
        template=template,
        dataset_revision=revision,
        students_file=students_file,
        learning_rate=learning_rate,
        epochs=epochs,
        global_batch_size=global_batch_size,
        per_device_batch_size=per_device_batch_size,
        max_length=max_length,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        lr_scheduler_type=lr_scheduler,
        max_steps=max_steps,
        save_steps=save_steps,
        logging_steps=logging_steps,
        seed=seed,
        gradient_checkpointing=gradient_checkpointing,
    )
    result = run_finetune(settings, push=push, eval_dir=eval_dir)
    if not quiet:
        console().print(_summary(result, dataset=f"{dataset} [{config}]", push=push))


def _summary(result: FinetuneResult, *, dataset: str, push: str | None) -> Table:
    from rich.table import Table

    table = Table(title="srecycle finetune", show_header=False)
    table.add_row("student", result.student)
    table.add_row("base model", result.base_model)
    table.add_row("dataset", dataset)
    table.add_row("template", result.template)
    table.add_row("rows", str(result.rows))
    table.add_row("resumed from", str(result.resumed_from) if result.resumed_from else "-")
    table.add_row("steps", f"{result.first_step} -> {result.global_step}")
    table.add_row("train loss", f"{result.train_loss:.4f}" if result.train_loss is not None else "-")
    table.add_row("time", f"{result.seconds:.1f} s")
    table.add_row("output", str(result.output_dir))
    if push:
        table.add_row("pushed to", push)
    return table
