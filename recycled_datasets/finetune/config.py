"""What one fine-tuning run is given: the paper's recipe by default (docs/method.md, section 5); the CLI fills it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError
from recycled_datasets.templates import validate_template
from recycled_datasets.tokens import SCORINGS


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
    scoring: str | None = field(
        default=None,
        metadata={
            "help": "Token layout (reference or split); default: the one the subset was scored with (its report)."
        },
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
        if self.scoring is not None and self.scoring not in SCORINGS:
            raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, not {self.scoring!r}")
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
