"""The subset a student trains on: loaded from a release (a Hub id or a local folder) and laid out in tokens.

The token ids come from :func:`recycled_datasets.tokens.lay_out`, the layout the scorer scored, so the student
trains on exactly what it was measured on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.chat import last_exchange_context
from recycled_datasets.errors import ConfigError, HubError, InputError
from recycled_datasets.repo_ids import is_repo_id
from recycled_datasets.tokens import Exchange, lay_out, reference_layouts

logger = logging.getLogger(__name__)

SUBSET_COLUMNS = ("instruction", "input", "output")


@dataclass(frozen=True, slots=True)
class Subset:
    """A student's subset as loaded for training, with what the card needs to cite it."""

    rows: Any  # datasets.Dataset
    revision: str | None
    license: str
    scoring: str | None = None  # the token layout its scores were taken with (its report), when recorded


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


def _read_report(report: Path | None) -> dict[str, Any] | None:
    """A config's report.json; None without one (not a release of ours)."""
    if report is None or not report.is_file():
        return None
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable report ({e}); push the release again", path=str(report)) from e
    if not isinstance(data, dict):
        raise InputError("unreadable report (not a JSON object); push the release again", path=str(report))
    return data


def _report_scoring(report: dict[str, Any] | None) -> str | None:
    """The scoring convention a config's report records for its student; ``split`` for a report written before
    there were two (every such release was scored that way); None without a report."""
    if report is None:
        return None
    student = report.get("student")
    value = student.get("scoring") if isinstance(student, dict) else None
    return value if isinstance(value, str) and value else "split"


def _subset_license(readme: Path | None, report: dict[str, Any] | None) -> str:
    """The card's license; without one, that of the source the report names (``other`` for unknown rows)."""
    from recycled_datasets.sources import license_of

    license = _card_license(readme) if readme is not None else None
    if license is not None:
        return license
    source = report.get("source") if report is not None else None
    license = license_of(source) if isinstance(source, str) else "other"
    logger.warning("the dataset card declares no license; recording %s, that of its source %s", license, source)
    return license


def _hub_report(dataset: str, config: str, sha: str) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from recycled_datasets.hub import hub_errors

    with hub_errors(dataset, action="read dataset"):
        try:
            return Path(hf_hub_download(dataset, f"{config}/report.json", repo_type="dataset", revision=sha))
        except EntryNotFoundError:
            return None


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
        if not is_repo_id(dataset):
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
    report = Path(path) / config / "report.json" if _is_local(dataset) else _hub_report(dataset, config, sha)
    record = _read_report(report)
    return Subset(rows=rows, revision=sha, license=_subset_license(readme, record), scoring=_report_scoring(record))


def training_examples(
    rows: Any,
    tokenizer: Any,
    template: str,
    *,
    scoring: str = "split",
    max_length: int | None = None,
    source: str | None = None,
) -> Any:
    """The subset in TRL's prompt-completion form, already tokenized by :func:`recycled_datasets.tokens.lay_out`.

    A chat row's prompt holds its earlier turns (from ``messages``) before the last user turn, so the loss
    covers the last assistant turn only, as the student scored it. The sequences are cut at ``max_length`` as the
    scorer cuts them; a row whose prompt alone fills it has nothing to train on and is left out, with a warning.

    Columns: ``id``, ``prompt`` (the scored prompt text), ``completion`` (response + EOS text), ``input_ids`` and
    ``completion_mask``. An empty instruction or response is an error: the scorer could not have scored it.
    ``scoring`` is the convention the subset was scored with (``reference`` lays out as the reference script).
    """
    import datasets

    ids = [str(i) for i in rows["id"]] if "id" in rows.column_names else [str(i) for i in range(len(rows))]
    exchanges = _exchanges(rows, source=source)
    if scoring == "reference":
        limit = max_length if max_length is not None else 1 << 30
        layouts = reference_layouts(tokenizer, template, exchanges, max_length=limit, stop=True)
    else:
        layouts = lay_out(tokenizer, template, exchanges, max_length=max_length, stop=True)
    keep = [i for i, layout in enumerate(layouts) if layout.n > 0]
    if not keep:  # TRL would stop with a bare StopIteration on an empty dataset
        raise InputError(
            f"no row fits --max-length {max_length}: the prompt of every one of the {len(layouts)} rows fills it "
            "alone, leaving no response token to train on; raise --max-length",
            path=source,
        )
    if len(keep) < len(layouts):
        logger.warning(
            "%d rows have no response token left within max_length=%d and are skipped",
            len(layouts) - len(keep),
            max_length,
        )
    eos_text = tokenizer.eos_token or ""
    return datasets.Dataset.from_dict(
        {
            "id": [ids[i] for i in keep],
            "prompt": [layouts[i].prompt for i in keep],
            "completion": [exchanges[i].target + eos_text for i in keep],
            "input_ids": [list(layouts[i].ids) for i in keep],
            "completion_mask": [layouts[i].mask for i in keep],
        }
    )


def _exchanges(rows: Any, *, source: str | None) -> list[Exchange]:
    """Each row's last exchange after its earlier turns, checked as the scorer would have needed it."""
    # A release's `messages` carry a chat row's earlier turns; the last exchange comes from the training fields,
    # so an Alpaca row with an input is laid out exactly as it was scored.
    messages = rows["messages"] if "messages" in rows.column_names else [None] * len(rows)
    exchanges = []
    for number, (instruction, input, output, turns) in enumerate(
        zip(rows["instruction"], rows["input"], rows["output"], messages, strict=True), start=1
    ):
        for name, value in (("instruction", instruction), ("output", output)):
            if not isinstance(value, str) or not value.strip():
                raise InputError(
                    "is empty: the student could not have scored this row", path=source, row=number, field=name
                )
        context = last_exchange_context(turns, instruction, input or "", output, source=source, row=number)
        exchanges.append(Exchange(instruction, output, input or "", context))
    return exchanges
