"""One fine-tuning run end to end: train (resuming), save, record what was trained on what, write the card."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError
from recycled_datasets.finetune.config import FinetuneConfig
from recycled_datasets.finetune.trainer import CHECKPOINT_DIR, TrainingJob, build_trainer
from recycled_datasets.records import FINETUNE_FILE
from recycled_datasets.workdir.files import write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FinetuneResult:
    """What a run did. ``first_step`` is the step it started from (0, or the checkpoint it resumed)."""

    output_dir: Path
    student: str
    base_model: str
    template: str
    rows: int
    first_step: int
    global_step: int
    train_loss: float | None
    resumed_from: Path | None
    losses: tuple[tuple[int, float], ...]  # (step, loss) logged by this run
    seconds: float


def mean_logged_loss(log_history: list[dict[str, Any]]) -> float | None:
    """Mean training loss per step over the whole run (resumed parts included), from the logged interval means."""
    total, steps, previous = 0.0, 0, 0
    for entry in sorted((e for e in log_history if "loss" in e), key=lambda e: e["step"]):
        width = entry["step"] - previous
        if width > 0:
            total += float(entry["loss"]) * width
            steps += width
            previous = entry["step"]
    return total / steps if steps else None


def _finish(config: FinetuneConfig, *, push: str | None, eval_dir: Path | None) -> None:
    """The evaluation attached, the card written and the checkpoint pushed when asked."""
    from recycled_datasets.hub import push_model, write_model_card

    if eval_dir is not None:
        from recycled_datasets.evaluation.card import attach_evaluation

        attach_evaluation(config.output_dir, Path(eval_dir))
    write_model_card(config.output_dir)
    if push:
        push_model(checkpoint=config.output_dir, repo_id=push)


def finetune_metadata(job: TrainingJob, train_loss: float | None) -> dict[str, Any]:
    """The content of ``srecycle_finetune.json``: what the model card cites."""
    config = job.config
    return {
        "base_model": job.base_model,
        "dataset": config.dataset,
        "config": config.config,
        "dataset_revision": job.subset.revision,
        "template": job.template,
        "scoring": job.scoring,
        "completion": "response followed by the tokenizer's EOS token; loss on the completion only",
        "hyperparameters": {
            "learning_rate": config.learning_rate,
            "epochs": config.epochs,
            "global_batch_size": config.per_device_batch_size * job.world_size * job.gradient_accumulation_steps,
            "per_device_batch_size": config.per_device_batch_size,
            "gradient_accumulation_steps": job.gradient_accumulation_steps,
            "world_size": job.world_size,
            "max_length": config.max_length,
            "warmup_ratio": config.warmup_ratio,
            "weight_decay": config.weight_decay,
            "lr_scheduler_type": config.lr_scheduler_type,
            "max_steps": config.max_steps,
            "seed": config.seed,
            "bf16": job.bf16,
        },
        "rows": len(job.trainer.train_dataset),
        "global_step": job.trainer.state.global_step,
        "license": job.subset.license,
        "train_loss": train_loss,
        "eval_results": None,
        "student": job.student,
        # what was asked, as given, so that a rerun with another base, batch or layout is never taken as this one
        "requested": {
            "base": config.base_model,
            "global_batch_size": config.global_batch_size,
            "scoring": config.scoring,
        },
    }


OUTPUT_MARK = ".srecycle-finetune.json"
# Settings a finished run is compared on: the same ones make a rerun a no-op, others are refused.
_SAME_RUN = (
    "learning_rate",
    "epochs",
    "per_device_batch_size",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "lr_scheduler_type",
    "max_steps",
    "seed",
)


def check_output(config: FinetuneConfig) -> None:
    """``--output`` follows the rule of every output: absent, empty, or a folder ``srecycle finetune`` wrote (its
    mark, its record, or only ``checkpoint-N`` folders of an earlier version's killed run); never the dataset."""
    from recycled_datasets.safety import check_target

    output = Path(config.output_dir)
    resolved = check_target(output, "--output")
    dataset = Path(config.dataset).expanduser()
    if dataset.is_dir():
        data = dataset.resolve()
        if resolved == data or data.is_relative_to(resolved) or resolved.is_relative_to(data):
            raise ConfigError(
                f"--output {output} is the dataset folder {config.dataset} (or holds it, or lies inside it); "
                "give the checkpoint a folder of its own"
            )
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise ConfigError(f"--output {output} is a file or a link; give a folder")
    entries = sorted(output.iterdir()) if output.is_dir() else []
    ours = (output / OUTPUT_MARK).is_file() or (output / FINETUNE_FILE).is_file()
    if entries and not ours and not all(p.is_dir() and CHECKPOINT_DIR.match(p.name) for p in entries):
        raise ConfigError(
            f"--output {output} is not empty and not a folder srecycle finetune wrote (it holds {entries[0].name}); "
            "give an empty or new folder"
        )


def mark_output(config: FinetuneConfig) -> None:
    """Sign ``--output`` as this command's before the first file of training lands in it (see check_output)."""
    from recycled_datasets.workdir.files import atomic_write_bytes

    path = Path(config.output_dir) / OUTPUT_MARK
    if not path.is_file():
        mark = {"written_by": "srecycle finetune", "dataset": config.dataset, "config": config.config}
        atomic_write_bytes(path, (json.dumps(mark) + "\n").encode("utf-8"), digest=False)


def finished_run(config: FinetuneConfig) -> dict[str, Any] | None:
    """The record of a run that already finished in ``--output`` with these settings (then a rerun trains nothing);
    None when there is none. A finished run with other settings is refused: training on would mix two recipes."""
    path = Path(config.output_dir) / FINETUNE_FILE
    if not path.is_file():
        return None
    from recycled_datasets.hub.model_card import read_finetune_info

    info = read_finetune_info(Path(config.output_dir))
    record = json.loads(path.read_text(encoding="utf-8"))
    asked = {"dataset": config.dataset, "config": config.config}
    found = {"dataset": info.dataset, "config": info.config}
    for name in _SAME_RUN:
        asked[name] = getattr(config, name)
        found[name] = info.hyperparameters.get(name)
    if config.template is not None:
        asked["template"], found["template"] = config.template, info.template
    requested = record.get("requested") if isinstance(record.get("requested"), dict) else {}
    for name in ("base", "global_batch_size", "scoring"):
        if name in requested:  # a record of an earlier version has none: compared on the rest
            asked[name], found[name] = getattr(config, "base_model" if name == "base" else name), requested[name]
    differ = [name for name in asked if asked[name] != found[name]]
    if differ:
        name = differ[0]
        raise ConfigError(
            f"--output {config.output_dir} holds a finished run with other settings ({name} was {found[name]!r}, "
            f"now {asked[name]!r}); give a new --output, or delete that folder to train it again"
        )
    return record


def finetune(config: FinetuneConfig, *, push: str | None = None, eval_dir: Path | None = None) -> FinetuneResult:
    """Train, save the model and tokenizer, write the metadata and the card, and push when asked.

    Resumes from the newest complete checkpoint in the output folder, so a killed run continues where it stopped;
    a run that finished with the same settings is not trained again (its card is rewritten, and pushed when asked).
    ``eval_dir`` (a ``srecycle judge`` output) puts its results into the card.
    """
    started = time.monotonic()
    if eval_dir is not None:  # a wrong folder fails now, not after training
        from recycled_datasets.evaluation.card import read_results

        read_results(Path(eval_dir))
    if push:  # fail now, not after hours of training
        from recycled_datasets.hub.publish import check_repo_id, resolve_token

        check_repo_id(push)
        resolve_token(None)
    check_output(config)
    record = finished_run(config)
    if record is not None:
        logger.info("%s already holds this finished run (step %s); nothing to train", config.output_dir,
                    record["global_step"])  # fmt: skip
        _finish(config, push=push, eval_dir=eval_dir)
        return FinetuneResult(
            output_dir=config.output_dir,
            student=record["student"],
            base_model=record["base_model"],
            template=record["template"],
            rows=int(record.get("rows") or 0),
            first_step=int(record["global_step"]),
            global_step=int(record["global_step"]),
            train_loss=record.get("train_loss"),
            resumed_from=None,
            losses=(),
            seconds=time.monotonic() - started,
        )
    job = build_trainer(config)
    trainer = job.trainer
    if trainer.is_world_process_zero():
        mark_output(config)
    if job.resume_from is not None:
        logger.info("resuming from %s", job.resume_from)
    logger.info(
        "fine-tuning %s on %d rows of %s [%s], template %s, %d x %d x %d sequences per step",
        job.base_model,
        len(trainer.train_dataset),
        config.dataset,
        config.config,
        job.template,
        config.per_device_batch_size,
        job.world_size,
        job.gradient_accumulation_steps,
    )
    trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
    train_loss = mean_logged_loss(trainer.state.log_history)
    trainer.save_model(str(config.output_dir))
    if trainer.is_world_process_zero():
        metadata = finetune_metadata(job, train_loss)
        write_json(config.output_dir / FINETUNE_FILE, metadata)
        _finish(config, push=push, eval_dir=eval_dir)
    return FinetuneResult(
        output_dir=config.output_dir,
        student=job.student,
        base_model=job.base_model,
        template=job.template,
        rows=len(trainer.train_dataset),
        first_step=job.report.first_step,
        global_step=trainer.state.global_step,
        train_loss=train_loss,
        resumed_from=job.resume_from,
        losses=tuple(job.report.losses),
        seconds=time.monotonic() - started,
    )
