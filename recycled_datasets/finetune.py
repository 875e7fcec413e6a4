"""Fine-tune a student on its subset with TRL's ``SFTTrainer``, and describe the checkpoint.

The defaults are the paper's recipe (docs/method.md, section 5).

The training text must be exactly what the student was scored on, or the subset was selected for a different
model than the one we train. So the prompt is ``render_prompt`` with the student's template, and the token ids
follow the scorer's layout ``[BOS] + ids(prompt) + ids(response)``, each part tokenized on its own without special
tokens. TRL would tokenize ``prompt + completion`` as one string (tokens can merge across the boundary, and a BOS
is added only by tokenizers that add one), so we hand it ids we built ourselves (``input_ids`` plus
``completion_mask``); TRL then turns the mask into labels, truncates on the right at ``max_length`` like the
scorer, and drops rows left without a target token. The completion is the raw response followed by the EOS
token, so the model learns to stop; the scorer never scores that EOS, it is the only addition.

A run writes checkpoints into its output folder and a rerun resumes from the last complete one. At the end the
folder holds the model, its tokenizer, ``srecycle_finetune.json`` (what was trained on what, with which
settings) and the project's model card written from it by :func:`recycled_datasets.hub.write_model_card`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from recycled_datasets.chat import last_exchange_context
from recycled_datasets.errors import ConfigError, HubError, InputError, ModelError
from recycled_datasets.hub.model_card import FINETUNE_FILE
from recycled_datasets.templates import render_prompt, validate_template
from recycled_datasets.workdir.files import write_json

logger = logging.getLogger(__name__)

# Alpaca (CC BY-NC 4.0) and WizardLM data, and the teacher outputs derived from them, are released for
# non-commercial use; a checkpoint trained on a subset without a declared license inherits that restriction.
DEFAULT_LICENSE = "cc-by-nc-4.0"
SUBSET_COLUMNS = ("instruction", "input", "output")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run: the paper's recipe by default (docs/method.md, 5); the CLI fills them."""

    dataset: str = field(
        metadata={"help": "The released dataset: a Hub id (org/name) or a local folder in Hub layout."}
    )
    config: str = field(metadata={"help": "The subset's config name, which is the student's key (e.g. llama2-7b)."})
    output_dir: Path = field(metadata={"help": "Folder for checkpoints and the final model; a rerun resumes here."})
    base_model: str | None = field(
        default=None, metadata={"help": "Model to fine-tune (Hub id or folder). Default: the student's own model."}
    )
    template: str | None = field(
        default=None, metadata={"help": "Prompt format; default: the template the student was scored with."}
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Hub revision of the dataset (branch, tag or commit). Default: the latest."}
    )
    students_file: Path | None = field(
        default=None, metadata={"help": "A TOML file of extra students, for a config key not in the shipped table."}
    )
    learning_rate: float = field(
        default=2e-5, metadata={"help": "Peak learning rate (paper: 2e-5 for 7B, 1e-5 for 13B)."}
    )
    epochs: float = field(default=3.0, metadata={"help": "Passes over the subset."})
    global_batch_size: int = field(
        default=128,
        metadata={"help": "Sequences per optimizer step, over all devices, reached by gradient accumulation."},
    )
    per_device_batch_size: int = field(default=4, metadata={"help": "Sequences per device per forward pass."})
    max_length: int = field(
        default=2048, metadata={"help": "Token limit per sequence (BOS included); longer ones are cut on the right."}
    )
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of the steps spent warming the rate up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "Learning-rate schedule after warmup (Stanford Alpaca's recipe: cosine)."}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides epochs). Default: no limit."}
    )
    save_steps: int = field(default=200, metadata={"help": "Write a resumable checkpoint every this many steps."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints (oldest removed). None keeps all."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every this many steps."})
    seed: int = field(default=42, metadata={"help": "Seed for data order and initialization of new weights."})
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision. Default: on when a CUDA GPU with bf16 is present."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass: less memory, ~30% slower."}
    )

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.students_file is not None:
            self.students_file = Path(self.students_file)
        if not self.dataset:
            raise ConfigError("--dataset is required: a Hub id or a local folder in Hub layout")
        if not self.config:
            raise ConfigError("--config is required: the student's key, which names the subset")
        if self.template is not None:
            validate_template(self.template)
        positive = {
            "learning_rate": self.learning_rate,
            "epochs": self.epochs,
            "global_batch_size": self.global_batch_size,
            "per_device_batch_size": self.per_device_batch_size,
            "save_steps": self.save_steps,
            "logging_steps": self.logging_steps,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, not {value}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be at least 8 tokens, not {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), not {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, not {self.weight_decay}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 when given, not {self.max_steps}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be >= 1 when given, not {self.save_total_limit}")


def field_help(name: str) -> str:
    """The help text of a :class:`FinetuneConfig` field, so the CLI and the dataclass say the same thing."""
    return {f.name: f.metadata["help"] for f in fields(FinetuneConfig)}[name]


def field_default(name: str) -> Any:
    return {f.name: f.default for f in fields(FinetuneConfig)}[name]


@dataclass(frozen=True, slots=True)
class Subset:
    """A student's subset as loaded for training, with what the card needs to cite it."""

    rows: Any  # datasets.Dataset
    revision: str | None
    license: str


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


@dataclass
class TrainingJob:
    """A trainer ready to run, with the facts the metadata file records."""

    trainer: Any  # SFTTrainer
    config: FinetuneConfig
    student: str
    base_model: str
    template: str
    subset: Subset
    gradient_accumulation_steps: int
    world_size: int
    bf16: bool
    resume_from: Path | None
    report: Any  # the progress/loss callback


# ---------------------------------------------------------------------------------------------------------------
# Data


def _is_local(dataset: str) -> bool:
    return Path(dataset).expanduser().is_dir()


def _card_license(readme: Path) -> str | None:
    from huggingface_hub import DatasetCard

    if not readme.is_file():
        return None
    card = DatasetCard.load(readme, ignore_metadata_errors=True)
    value = card.data.get("license")
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value) if value else None


def _hub_revision_and_readme(dataset: str, revision: str | None) -> tuple[str, Path | None]:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from recycled_datasets.hub import hub_errors

    with hub_errors(dataset, action="read dataset"):
        sha = HfApi().dataset_info(dataset, revision=revision).sha
        if not sha:
            raise HubError(f"read dataset {dataset}: the Hub did not report a commit")
        try:
            readme = hf_hub_download(dataset, "README.md", repo_type="dataset", revision=sha)
        except EntryNotFoundError:
            return sha, None
    return sha, Path(readme)


def _check_not_empty(folder: Path, config: str) -> None:
    """A config whose selection kept no row has a report but no data file: say so, with the report's drops."""
    report_path = folder / config / "report.json"
    if not report_path.is_file() or any((folder / config).glob("train-*")):
        return
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"config {config!r} has no data and an unreadable report ({e})", path=str(folder)) from e
    if report.get("rows_kept") != 0:
        return
    drops = ", ".join(f"{n} {why}" for why, n in sorted((report.get("drops") or {}).items()) if n) or "none recorded"
    raise InputError(
        f"the subset {config!r} is empty: its selection ({report.get('mode', '?')} mode) kept 0 of "
        f"{report.get('rows_in', '?')} rows (dropped: {drops}); select it again with other settings "
        "(e.g. srecycle select --keep-unreflected) or use a stronger teacher",
        path=str(folder),
    )


def load_subset(dataset: str, config: str, *, revision: str | None = None) -> Subset:
    """Load ``config``'s train split of a released dataset, pinned to a commit when it comes from the Hub.

    The Hub revision is resolved to a commit first and the data loaded at that commit, so the revision the card
    cites is the data that was trained on.
    """
    import datasets

    from recycled_datasets.hf_datasets import load_dataset

    if _is_local(dataset):
        if revision:
            raise ConfigError(f"--revision applies to Hub datasets; {dataset} is a local folder")
        path, sha, readme = str(Path(dataset).expanduser()), None, Path(dataset).expanduser() / "README.md"
    else:
        if not _HUB_ID.match(dataset):
            raise InputError(f"dataset {dataset!r} is neither an existing folder nor a Hub id of the form org/name")
        path = dataset
        sha, readme = _hub_revision_and_readme(dataset, revision)
    if _is_local(dataset):
        _check_not_empty(Path(path), config)
    try:
        rows = load_dataset(path, config, split="train", revision=sha)
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
        raise InputError(f"cannot load config {config!r} (split 'train'): {e}", path=dataset) from e
    missing = [c for c in SUBSET_COLUMNS if c not in rows.column_names]
    if missing:
        raise InputError(
            f"config {config!r} lacks the columns {missing}; a subset has {', '.join(SUBSET_COLUMNS)}", path=dataset
        )
    if len(rows) == 0:
        raise InputError(f"config {config!r} has no rows to train on", path=dataset)
    license = _card_license(readme) if readme is not None else None
    if license is None:
        logger.warning(
            "the dataset card declares no license; recording %s (Alpaca/WizardLM-derived data)", DEFAULT_LICENSE
        )
        license = DEFAULT_LICENSE
    return Subset(rows=rows, revision=sha, license=license)


def encode_examples(tokenizer: Any, prompts: list[str], responses: list[str]) -> list[tuple[list[int], list[int]]]:
    """Token ids and completion mask of each training sequence: the scorer's layout plus a final EOS.

    ``[start] + ids(prompt) + ids(response) + [EOS]``, each part tokenized alone without special tokens, exactly
    as the scorer lays out the conditional pass (``scoring.plan``): the start token is BOS (else EOS), and a BOS
    that the prompt text already begins with (a chat template that writes it) is not doubled.
    Only the response and the EOS carry loss.
    """
    from recycled_datasets.scoring.plan import start_token

    if not prompts:
        return []
    start = start_token(tokenizer)
    head = [start] if start is not None else []
    bos = tokenizer.bos_token_id
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    encoded = []
    for prompt, target in zip(prompt_ids, target_ids, strict=True):
        prefix = head + (prompt[1:] if bos is not None and prompt[:1] == [bos] else prompt)
        encoded.append(([*prefix, *target, *stop], [0] * len(prefix) + [1] * (len(target) + len(stop))))
    return encoded


def training_examples(rows: Any, tokenizer: Any, template: str, *, source: str | None = None) -> Any:
    """The subset in TRL's prompt-completion form, already tokenized (see the module docstring for why).

    A chat row's prompt holds its earlier turns (from ``messages``) before the last user turn, so the loss
    covers the last assistant turn only, as the student scored it.

    Columns: ``id``, ``prompt`` (the scored prompt text), ``completion`` (response + EOS text), ``input_ids`` and
    ``completion_mask``. An empty instruction or response is an error: the scorer could not have scored it.
    """
    import datasets

    ids = [str(i) for i in rows["id"]] if "id" in rows.column_names else [str(i) for i in range(len(rows))]
    # A release's `messages` carry a chat row's earlier turns; the last exchange comes from the training fields,
    # so an Alpaca row with an input is laid out exactly as it was scored.
    messages = rows["messages"] if "messages" in rows.column_names else [None] * len(rows)
    prompts, responses = [], []
    for number, (instruction, input, output, turns) in enumerate(
        zip(rows["instruction"], rows["input"], rows["output"], messages, strict=True), start=1
    ):
        for name, value in (("instruction", instruction), ("output", output)):
            if not isinstance(value, str) or not value.strip():
                raise InputError(
                    "is empty: the student could not have scored this row", path=source, row=number, field=name
                )
        context = last_exchange_context(turns, instruction, input or "", output, source=source, row=number)
        prompts.append(render_prompt(template, instruction, input or "", tokenizer=tokenizer, context=context))
        responses.append(output)
    encoded = encode_examples(tokenizer, prompts, responses)
    eos_text = tokenizer.eos_token or ""
    return datasets.Dataset.from_dict(
        {
            "id": ids,
            "prompt": prompts,
            "completion": [response + eos_text for response in responses],
            "input_ids": [input_ids for input_ids, _ in encoded],
            "completion_mask": [mask for _, mask in encoded],
        }
    )


# ---------------------------------------------------------------------------------------------------------------
# Training


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
        (p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)),
        key=lambda p: int(_CHECKPOINT.match(p.name).group(1)),
        reverse=True,
    )
    for path in candidates:
        if (path / "trainer_state.json").is_file():
            if path.name != Path(newest).name:
                logger.warning("%s is incomplete (the run stopped while writing it); resuming from %s", newest, path)
            return path
    return None


def _report_callback() -> Any:
    from transformers import TrainerCallback

    from recycled_datasets.progress import progress

    class Report(TrainerCallback):
        """Drives a rich progress bar and logs the loss; keeps the (step, loss) pairs this run logged."""

        def __init__(self) -> None:
            self.first_step = 0
            self.losses: list[tuple[int, float]] = []
            self._stack = ExitStack()
            self._bar: Any = None
            self._task: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.first_step = state.global_step
            if state.is_world_process_zero:
                self._bar = self._stack.enter_context(progress())
                self._task = self._bar.add_task("fine-tuning", total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._bar is not None:
                self._bar.update(self._task, completed=state.global_step)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if not logs or "loss" not in logs:
                return
            self.losses.append((state.global_step, float(logs["loss"])))
            if state.is_world_process_zero:
                extra = "".join(
                    f", {name} {logs[name]:.4g}"
                    for name in ("learning_rate", "grad_norm", "mean_token_accuracy")
                    if name in logs
                )
                logger.info("step %d/%d: loss %.4f%s", state.global_step, state.max_steps, logs["loss"], extra)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._stack.close()
            self._bar = None

    return Report()


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


def build_trainer(config: FinetuneConfig) -> TrainingJob:
    """Resolve the student, load the subset, base model and tokenizer, and build the trainer (no training yet)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from recycled_datasets.models import pretrained_path, resolve_student
    from recycled_datasets.progress import progress_enabled

    spec = resolve_student(config.config, students_file=config.students_file)
    template = config.template or spec.template
    if template != spec.template:
        logger.warning(
            "training with template %s, but %s was scored (and its subset selected) with %s",
            template,
            spec.key,
            spec.template,
        )
    if config.base_model:
        # The same forms as --student: a students-table key, a Hub id, a folder or a .gguf file.
        try:
            base_spec = resolve_student(config.base_model, students_file=config.students_file)
        except ConfigError as e:
            raise ConfigError(f"--base: {e}") from e
        base, revision, base_model = pretrained_path(base_spec), base_spec.revision or None, base_spec.hub_id
    else:
        base, revision, base_model = pretrained_path(spec), spec.revision or None, spec.hub_id
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
    bf16 = _use_bf16(config.bf16)
    try:
        args = SFTConfig(
            output_dir=str(config.output_dir),
            learning_rate=config.learning_rate,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps or -1,
            per_device_train_batch_size=config.per_device_batch_size,
            gradient_accumulation_steps=accumulation,
            max_length=config.max_length,
            truncation_mode="keep_start",
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
    if not progress_enabled():
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()

    subset = load_subset(config.dataset, config.config, revision=config.dataset_revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the tokenizer of {base}: {type(e).__name__}: {e}") from e
    examples = training_examples(subset.rows, tokenizer, template, source=f"{config.dataset} [{config.config}]")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, revision=revision, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the model {base}: {type(e).__name__}: {e}") from e

    report = _report_callback()
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=examples, processing_class=tokenizer, callbacks=[report]
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the report callback logs instead
    dropped = len(examples) - len(trainer.train_dataset)
    if dropped:
        logger.warning(
            "%d rows have no response token left within max_length=%d and are skipped", dropped, config.max_length
        )
    return TrainingJob(
        trainer=trainer,
        config=config,
        student=spec.key,
        base_model=base_model,
        template=template,
        subset=subset,
        gradient_accumulation_steps=accumulation,
        world_size=world_size,
        bf16=bf16,
        resume_from=last_checkpoint(config.output_dir),
        report=report,
    )


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


def finetune_metadata(job: TrainingJob, train_loss: float | None) -> dict[str, Any]:
    """The content of ``srecycle_finetune.json``: what the model card cites."""
    config = job.config
    return {
        "base_model": job.base_model,
        "dataset": config.dataset,
        "config": config.config,
        "dataset_revision": job.subset.revision,
        "template": job.template,
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
    }


def finetune(config: FinetuneConfig, *, push: str | None = None, eval_dir: Path | None = None) -> FinetuneResult:
    """Train, save the model and tokenizer, write the metadata and the card, and push when asked.

    Resumes from the newest complete checkpoint in the output folder, so a killed run continues where it stopped.
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
    job = build_trainer(config)
    trainer = job.trainer
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
        from recycled_datasets.hub import push_model, write_model_card

        if eval_dir is not None:
            from recycled_datasets.evaluation.card import attach_evaluation

            attach_evaluation(config.output_dir, Path(eval_dir))
        write_model_card(config.output_dir)
        if push:
            push_model(checkpoint=config.output_dir, repo_id=push)
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
