"""A TRL ``SFTTrainer`` ready to run on a student's subset, and where a killed run resumes."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError, ModelError
from recycled_datasets.finetune.config import FinetuneConfig
from recycled_datasets.finetune.data import Subset, load_subset, training_examples

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainingJob:
    """A trainer ready to run, with the facts the metadata file records."""

    trainer: Any  # SFTTrainer
    config: FinetuneConfig
    student: str
    base_model: str
    template: str
    scoring: str
    subset: Subset
    gradient_accumulation_steps: int
    world_size: int
    bf16: bool
    resume_from: Path | None
    report: Any  # the progress/loss callback


def gradient_accumulation_steps(global_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Forward passes per optimizer step so that the global batch is at least ``global_batch_size``."""
    return max(1, math.ceil(global_batch_size / (per_device_batch_size * world_size)))


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir``.

    transformers' ``get_last_checkpoint`` takes the highest-numbered folder even when a killed run left it half
    written; the trainer state is saved last, so a checkpoint without it is skipped.
    """
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    newest = get_last_checkpoint(str(output_dir))
    if newest is None:
        return None
    candidates = sorted(
        (p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_DIR.match(p.name)),
        key=lambda p: int(CHECKPOINT_DIR.match(p.name).group(1)),
        reverse=True,
    )
    for path in candidates:
        if (path / "trainer_state.json").is_file():
            if path.name != Path(newest).name:
                logger.warning("%s is incomplete (the run stopped while writing it); resuming from %s", newest, path)
            return path
    return None


def _trainer_class() -> type:
    from trl import SFTTrainer

    class ProjectSFTTrainer(SFTTrainer):
        """``SFTTrainer`` that writes no card: the checkpoint's README is the project's own, written at the end."""

        def create_model_card(self, *args: Any, **kwargs: Any) -> None:
            return None

    return ProjectSFTTrainer


def _use_bf16(requested: bool | None) -> bool:
    import torch

    available = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if requested is None:
        return available
    if requested and not available:
        raise ConfigError("bf16 needs a CUDA GPU that supports it; none is available here")
    return requested


def _student_and_base(config: FinetuneConfig) -> tuple[Any, str, str, str | None, str]:
    """(student spec, template, base model path, its revision, its name for the card)."""
    from recycled_datasets.models import pretrained_path, resolve_student

    spec = resolve_student(config.config, students_file=config.students_file)
    template = config.template or spec.template
    if template != spec.template:
        logger.warning(
            "training with template %s, but %s was scored (and its subset selected) with %s",
            template,
            spec.key,
            spec.template,
        )
    base_spec = spec
    if config.base_model:
        # The same forms as --student: a students-table key, a Hub id, a folder or a .gguf file.
        try:
            base_spec = resolve_student(config.base_model, students_file=config.students_file)
        except ConfigError as e:
            raise ConfigError(f"--base: {e}") from e
    return spec, template, pretrained_path(base_spec), base_spec.revision or None, base_spec.hub_id


def _scoring(config: FinetuneConfig, spec: Any, template: str, subset: Any) -> str:
    """The token layout to train on: asked for, else the one the subset's report records, else the default."""
    from recycled_datasets.tokens import resolve_scoring

    multi_turn = "messages" in subset.rows.column_names and any(len(m or ()) > 2 for m in subset.rows["messages"])
    if config.scoring is None and subset.scoring is not None:
        return resolve_scoring(subset.scoring, template, multi_turn=multi_turn)
    scoring = resolve_scoring(config.scoring, template, multi_turn=multi_turn, preferred=spec.scoring or None)
    if subset.scoring is not None and scoring != subset.scoring:
        logger.warning("training with the %s layout, but the subset was scored with %s", scoring, subset.scoring)
    return scoring


def _batching(config: FinetuneConfig) -> tuple[int, int]:
    """(world size, gradient accumulation steps) for the global batch asked for."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = gradient_accumulation_steps(config.global_batch_size, config.per_device_batch_size, world_size)
    effective = accumulation * config.per_device_batch_size * world_size
    if effective != config.global_batch_size:
        logger.warning(
            "global batch %d is not a multiple of %d per device x %d devices; training with %d",
            config.global_batch_size,
            config.per_device_batch_size,
            world_size,
            effective,
        )
    return world_size, accumulation


def _sft_args(config: FinetuneConfig, *, accumulation: int, world_size: int, bf16: bool) -> Any:
    import torch
    from trl import SFTConfig

    try:
        return SFTConfig(
            output_dir=str(config.output_dir),
            learning_rate=config.learning_rate,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps or -1,
            per_device_train_batch_size=config.per_device_batch_size,
            gradient_accumulation_steps=accumulation,
            # The examples are already cut at config.max_length by the scorer's layout (tokens.lay_out).
            max_length=None,
            warmup_steps=config.warmup_ratio,  # a value below 1 is a ratio of the total steps
            weight_decay=config.weight_decay,
            lr_scheduler_type=config.lr_scheduler_type,
            completion_only_loss=True,
            packing=False,
            bf16=bf16,
            activation_checkpointing=config.gradient_checkpointing,
            dataloader_pin_memory=torch.cuda.is_available(),
            # Several processes without CUDA (torchrun on CPU) need accelerate's CPU mode to run as DDP over gloo.
            use_cpu=world_size > 1 and not torch.cuda.is_available(),
            save_strategy="steps",
            save_steps=config.save_steps,
            save_total_limit=config.save_total_limit,
            logging_strategy="steps",
            logging_steps=config.logging_steps,
            logging_first_step=True,
            seed=config.seed,
            data_seed=config.seed,
            report_to=[],
            disable_tqdm=True,
            push_to_hub=False,
        )
    except ValueError as e:  # transformers validates the arguments it is given
        raise ConfigError(f"invalid training settings: {e}") from e


def _quiet_libraries() -> None:
    from recycled_datasets.progress import progress_enabled

    if not progress_enabled():
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def build_trainer(config: FinetuneConfig) -> TrainingJob:
    """Resolve the student, load the subset, base model and tokenizer, and build the trainer (no training yet)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    from recycled_datasets.finetune.callback import report_callback

    spec, template, base, revision, base_model = _student_and_base(config)
    world_size, accumulation = _batching(config)
    bf16 = _use_bf16(config.bf16)
    args = _sft_args(config, accumulation=accumulation, world_size=world_size, bf16=bf16)
    _quiet_libraries()
    subset = load_subset(config.dataset, config.config, revision=config.dataset_revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the tokenizer of {base}: {type(e).__name__}: {e}") from e
    source = f"{config.dataset} [{config.config}]"
    scoring = _scoring(config, spec, template, subset)
    examples = training_examples(
        subset.rows, tokenizer, template, scoring=scoring, max_length=config.max_length, source=source
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(base, revision=revision, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the model {base}: {type(e).__name__}: {e}") from e

    report = report_callback()
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=examples, processing_class=tokenizer, callbacks=[report]
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the report callback logs instead
    return TrainingJob(
        trainer=trainer,
        config=config,
        student=spec.key,
        base_model=base_model,
        template=template,
        scoring=scoring,
        subset=subset,
        gradient_accumulation_steps=accumulation,
        world_size=world_size,
        bf16=bf16,
        resume_from=last_checkpoint(config.output_dir),
        report=report,
    )
