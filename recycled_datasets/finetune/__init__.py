"""Fine-tune a student on its subset with TRL's ``SFTTrainer``, and describe the checkpoint.

The defaults are the paper's recipe (docs/method.md, section 5).

The training sequences must be exactly what the student was scored on, or the subset was selected for a
different model than the one we train. So the token ids come from :func:`recycled_datasets.tokens.lay_out`, the
function the scorer lays out its sequences with: the student's template, the prompt and the response tokenized
apart, the start token, the cut at ``max_length``. TRL would tokenize ``prompt + completion`` as one string
(tokens can merge across the boundary, and a BOS is added only by tokenizers that add one), so we hand it those
ids (``input_ids`` plus ``completion_mask``), already cut, and TRL only turns the mask into labels. The
completion is the raw response followed by the EOS token, so the model learns to stop; the scorer never scores
that EOS, it is the only addition.

A run writes checkpoints into its output folder and a rerun resumes from the last complete one. At the end the
folder holds the model, its tokenizer, ``srecycle_finetune.json`` (what was trained on what, with which
settings) and the project's model card written from it by :func:`recycled_datasets.hub.write_model_card`.

The modules, by job: ``config`` (the run's settings), ``data`` (the subset and its token layout), ``trainer``
(the ``SFTTrainer`` and resuming), ``callback`` (progress and losses), ``run`` (one run end to end).
"""

from __future__ import annotations

from recycled_datasets.finetune.config import FinetuneConfig, field_default, field_help
from recycled_datasets.finetune.data import SUBSET_COLUMNS, Subset, load_subset, training_examples
from recycled_datasets.finetune.run import FinetuneResult, finetune, finetune_metadata, mean_logged_loss
from recycled_datasets.finetune.trainer import (
    TrainingJob,
    build_trainer,
    gradient_accumulation_steps,
    last_checkpoint,
)
from recycled_datasets.records import FINETUNE_FILE

__all__ = [
    "FINETUNE_FILE",
    "SUBSET_COLUMNS",
    "FinetuneConfig",
    "FinetuneResult",
    "Subset",
    "TrainingJob",
    "build_trainer",
    "field_default",
    "field_help",
    "finetune",
    "finetune_metadata",
    "gradient_accumulation_steps",
    "last_checkpoint",
    "load_subset",
    "mean_logged_loss",
    "training_examples",
]
