"""Model cards and checkpoint uploads: a fine-tuned student points back to the exact data it was trained on.

The fine-tune stage leaves ``srecycle_finetune.json`` in the checkpoint; the card is rendered from it and
``model_cards/model_card.md.j2``, so the dataset repo, config and revision in the card are the ones training
actually read, not what someone remembered to type.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError, InputError
from recycled_datasets.hub.cards import MODEL_TEMPLATE, render_card
from recycled_datasets.hub.publish import PushResult, _endpoint, check_repo_id, ensure_repo, hub_errors, resolve_token
from recycled_datasets.records import FINETUNE_FILE
from recycled_datasets.repo_ids import is_repo_id

logger = logging.getLogger(__name__)

# Trainer leftovers that are not part of a usable model (resume state, pickled arguments, nested checkpoints).
_SKIP_FILES = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|training_args\.bin|trainer_state\.json)$"
)
_SKIP_DIRS = re.compile(r"^(checkpoint-\d+|\..*|__pycache__)$")


@dataclass(frozen=True)
class FinetuneInfo:
    """The fine-tune record, validated: what the card says about training."""

    base_model: str
    dataset: str
    config: str
    template: str
    license: str
    student: str
    dataset_revision: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    train_loss: float | None = None
    eval_results: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        for name in ("base_model", "dataset", "config", "template", "license", "student"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InputError("missing or empty", path=FINETUNE_FILE, field=name)
        if not isinstance(self.hyperparameters, dict):
            raise InputError("must be an object", path=FINETUNE_FILE, field="hyperparameters")
        if self.eval_results is not None and not (
            isinstance(self.eval_results, list) and all(isinstance(r, dict) for r in self.eval_results)
        ):
            raise InputError("must be a list of objects", path=FINETUNE_FILE, field="eval_results")

    @property
    def dataset_on_hub(self) -> bool:
        """A Hub id (ORG/NAME) goes into the ``datasets`` metadata; a local folder only into the text."""
        return is_repo_id(self.dataset) and not Path(self.dataset).exists()


def read_finetune_info(checkpoint_dir: Path) -> FinetuneInfo:
    import json

    path = Path(checkpoint_dir) / FINETUNE_FILE
    if not path.is_file():
        raise InputError(
            f"not a srecycle checkpoint (no {FINETUNE_FILE}): run `srecycle finetune` first", path=str(checkpoint_dir)
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"unreadable JSON ({exc})", path=str(path)) from exc
    return FinetuneInfo(**{k: v for k, v in data.items() if k in FinetuneInfo.__dataclass_fields__})


def model_card_text(info: FinetuneInfo, evaluation: Any = None) -> str:
    """The card of a checkpoint; ``evaluation`` (``evaluation.card.CardEvaluation``) adds a judge's results, whose
    ``EvalResult`` list becomes the card's ``model-index``."""
    from huggingface_hub import ModelCard, ModelCardData

    indexed = evaluation is not None and bool(evaluation.eval_results)
    card_data = ModelCardData(
        base_model=info.base_model,
        datasets=[info.dataset] if info.dataset_on_hub else None,  # a local folder goes only into the text
        license=info.license,
        language=["en"],
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["srecycled", "reflection-tuning", "instruction-tuning", "sft", f"student-{info.student}"],
        model_name=evaluation.model_name if indexed else None,
        eval_results=list(evaluation.eval_results) if indexed else None,
        base_model_relation="finetune",
    )
    columns = list(dict.fromkeys(k for result in info.eval_results or [] for k in result))
    card = render_card(
        ModelCard,
        card_data,
        MODEL_TEMPLATE,
        info=info,
        evaluation=evaluation,
        hyperparameters=sorted(info.hyperparameters.items()),
        eval_columns=columns,
        eval_rows=[[_cell(r.get(c)) for c in columns] for r in info.eval_results or []],
    )
    return str(card)


def write_model_card(checkpoint_dir: Path) -> Path:
    """Write ``CHECKPOINT/README.md`` from the checkpoint's fine-tune record; returns its path."""
    from recycled_datasets.evaluation.card import card_evaluation
    from recycled_datasets.workdir.files import atomic_write_bytes

    info = read_finetune_info(Path(checkpoint_dir))
    evaluation = card_evaluation(Path(checkpoint_dir), model_name=f"{info.student}-srecycled")
    text = model_card_text(info, evaluation)
    return atomic_write_bytes(Path(checkpoint_dir) / "README.md", text.encode("utf-8"), digest=False)


def checkpoint_files(checkpoint_dir: Path) -> list[str]:
    """The files that make the model: everything but trainer resume state, sorted, as POSIX paths."""
    out = []
    for path in sorted(Path(checkpoint_dir).rglob("*")):
        rel = path.relative_to(checkpoint_dir)
        skipped = any(_SKIP_DIRS.match(p) for p in rel.parts[:-1]) or _SKIP_FILES.match(rel.name)
        if path.is_file() and not skipped and not rel.name.startswith("."):
            out.append(rel.as_posix())
    return out


def push_model(
    *,
    checkpoint: Path,
    repo_id: str,
    to_dir: Path | None = None,
    token: str | None = None,
    private: bool = False,
    tag: str | None = None,
    endpoint: str | None = None,
    eval_dir: Path | None = None,
) -> PushResult:
    """Upload a checkpoint with its card in one commit (or copy it to ``to_dir`` with no network).

    ``eval_dir`` (the output folder of ``srecycle judge``) is copied into the checkpoint first, so the card
    shows and indexes its results.
    """
    checkpoint = Path(checkpoint)
    check_repo_id(repo_id)
    if eval_dir is not None:
        from recycled_datasets.evaluation.card import attach_evaluation

        attach_evaluation(checkpoint, Path(eval_dir))
    write_model_card(checkpoint)
    files = checkpoint_files(checkpoint)
    if to_dir is not None:
        to_dir = Path(to_dir)
        if to_dir.exists() and any(to_dir.iterdir()):
            raise ConfigError(f"{to_dir}: the target folder must be empty or absent")
        for rel in files:
            (to_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(checkpoint / rel, to_dir / rel)
        return PushResult(repo_id, "model", None, None, None, (), tuple(files), ())

    from huggingface_hub import CommitOperationAdd, HfApi

    from recycled_datasets.hub.publish import _check_tag_free

    token = resolve_token(token)
    api = HfApi(endpoint=_endpoint(endpoint), token=token, library_name="recycled-datasets")
    with hub_errors(repo_id, action="push model to", token=token, endpoint=api.endpoint):
        ensure_repo(api, repo_id, "model", private=private)
        _check_tag_free(api, repo_id, "model", tag, action="push model to")
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(checkpoint / rel)) for rel in files]
        message = f"Upload {checkpoint.name} fine-tuned on {read_finetune_info(checkpoint).dataset}"
        commit = api.create_commit(repo_id, repo_type="model", operations=operations, commit_message=message)
        if tag is not None:
            api.create_tag(repo_id, tag=tag, revision=commit.oid)
    logger.info("pushed %d files to %s at %s", len(files), repo_id, commit.oid)
    return PushResult(repo_id, "model", commit.oid, commit.commit_url, tag, (), tuple(files), ())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")
