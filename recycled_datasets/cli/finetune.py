"""``srecycle finetune``: train a student on its subset with the paper's recipe, one command to a checkpoint.

Option help and defaults come from :class:`recycled_datasets.finetune.FinetuneConfig`, so the two cannot drift.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recycled_datasets.cli.options import Quiet, StudentsFile, Template, summary_table
from recycled_datasets.finetune import field_default, field_help

if TYPE_CHECKING:
    from rich.table import Table

    from recycled_datasets.finetune import FinetuneResult


def _field(name: str, flag: str | None = None, **limits: Any) -> Any:
    """The option of :class:`FinetuneConfig` field ``name``: its help, named ``flag`` (default: --NAME)."""
    return typer.Option(flag or "--" + name.replace("_", "-"), help=field_help(name), **limits)


def finetune(
    dataset: Annotated[str, _field("dataset")],
    config: Annotated[str, _field("config")],
    output: Annotated[Path, _field("output_dir", "--output")],
    base: Annotated[str | None, _field("base_model", "--base")] = None,
    push: Annotated[
        str | None, typer.Option("--push", help="After training, upload the checkpoint to this Hub repo (org/name).")
    ] = None,
    eval_dir: Annotated[
        Path | None,
        typer.Option("--eval", help="A `srecycle judge` output folder: its results go into the model card."),
    ] = None,
    revision: Annotated[str | None, _field("dataset_revision", "--revision")] = None,
    template: Template = None,
    students_file: StudentsFile = None,
    learning_rate: Annotated[float, _field("learning_rate", min=0.0)] = field_default("learning_rate"),
    epochs: Annotated[float, _field("epochs", min=0.0)] = field_default("epochs"),
    global_batch_size: Annotated[int, _field("global_batch_size", min=1)] = field_default("global_batch_size"),
    per_device_batch_size: Annotated[int, _field("per_device_batch_size", min=1)] = field_default(
        "per_device_batch_size"
    ),
    max_length: Annotated[int, _field("max_length", min=8)] = field_default("max_length"),
    warmup_ratio: Annotated[float, _field("warmup_ratio", min=0.0, max=1.0)] = field_default("warmup_ratio"),
    weight_decay: Annotated[float, _field("weight_decay", min=0.0)] = field_default("weight_decay"),
    lr_scheduler: Annotated[str, _field("lr_scheduler_type", "--lr-scheduler")] = field_default("lr_scheduler_type"),
    max_steps: Annotated[int | None, _field("max_steps", min=1)] = None,
    save_steps: Annotated[int, _field("save_steps", min=1)] = field_default("save_steps"),
    logging_steps: Annotated[int, _field("logging_steps", min=1)] = field_default("logging_steps"),
    seed: Annotated[int, _field("seed")] = field_default("seed"),
    gradient_checkpointing: Annotated[bool, _field("gradient_checkpointing")] = False,
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
    table = summary_table("srecycle finetune")
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
