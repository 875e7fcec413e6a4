"""The reference authors' published scores imported as a student's scores table (docs/method.md, section 8).

Their analysis sets (e.g. ``MingLiiii/Alpaca_Analysis_llama2_7b``) hold, per variant split (``origin``,
``reflect_instruction``, ``reflect_response``, ``reflect_both``), one record per source row in source order whose
``data`` struct carries the reference scoring script's two lists, in its order: instruction alone, response
alone, instruction given the guess prompt, response given the prompt (``loss`` and ``ppl``). Row i of each split
is row i of the workdir's reflections: rows are matched by position and the counts must agree.

IFD and r-IFD are the reference's own ratios of perplexities (``ppl[3] / ppl[1]`` and ``ppl[2] / ppl[0]``), so
``select`` cuts exactly where the reference selection would. A record the script left empty (an empty response)
or wrote as zeros (its failure value) is a missing score with the reason, never a 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycled_datasets.errors import InputError
from recycled_datasets.models import StudentSpec
from recycled_datasets.records import SCORE_COLUMNS, VARIANTS
from recycled_datasets.scoring import STATUS_MISSING, STATUS_OK
from recycled_datasets.stages.reference import REFERENCE_SPLITS, _reference_splits
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.pairs import pairs_digest, pairs_of
from recycled_datasets.workdir.tables import read_reflections, write_scores

# The reference script's list order -> this project's loss columns.
REFERENCE_ORDER = ("loss_instruction_direct", "loss_response_direct", "loss_instruction_cond", "loss_response_cond")


@dataclass(frozen=True, slots=True)
class ScoresImport:
    rows: int
    pairs: int
    missing: int
    source: str


def _lists(record: Any, source: str, split: str, row: int) -> tuple[list[float], list[float]] | None:
    """(loss, ppl) of one record, or None where the script recorded nothing for it."""
    if isinstance(record, dict) and isinstance(record.get("data"), dict):
        record = record["data"]
    if not isinstance(record, dict):
        raise InputError(
            f"split {split}: expected an object with 'loss' and 'ppl' lists (or a 'data' struct holding them), "
            f"found {type(record).__name__}",
            path=source,
            row=row,
        )
    loss, ppl = record.get("loss"), record.get("ppl")
    if loss is None and ppl is None:
        return None
    for name, values in (("loss", loss), ("ppl", ppl)):
        if (
            not isinstance(values, list)
            or len(values) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            raise InputError(
                f"split {split}: '{name}' must be a list of 4 numbers (instruction alone, response alone, "
                "instruction given the guess prompt, response given the prompt)",
                path=source,
                row=row,
                field=name,
            )
    return [float(v) for v in loss], [float(v) for v in ppl]


def _ratio(numerator: float, denominator: float) -> float | None:
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or numerator <= 0 or denominator <= 0:
        return None
    return numerator / denominator


def _score_row(lists: tuple[list[float], list[float]] | None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(SCORE_COLUMNS)
    if lists is None:
        row.update(status=STATUS_MISSING, reason="the reference script recorded no scores (empty response)")
        return row
    loss, ppl = lists
    for name, value in zip(REFERENCE_ORDER, loss, strict=True):
        row[name] = value if math.isfinite(value) else None
    row["ifd"], row["rifd"] = _ratio(ppl[3], ppl[1]), _ratio(ppl[2], ppl[0])
    reasons = [
        f"{name}: the reference script failed on this pair (ppl {a!r} / {b!r})"
        for name, value, a, b in (("ifd", row["ifd"], ppl[3], ppl[1]), ("rifd", row["rifd"], ppl[2], ppl[0]))
        if value is None
    ]
    row.update(status=STATUS_MISSING if reasons else STATUS_OK, reason="; ".join(reasons) or None)
    return row


def import_scores(source: str, workdir: Path, spec: StudentSpec, *, template: str, max_length: int) -> ScoresImport:
    """Write ``spec``'s scores table from the published analysis splits in ``source`` (see the module doc)."""
    import polars as pl

    wd = Workdir(workdir)
    reflections, _ = read_reflections(wd)
    splits = {  # (file or split name, row number in it, record), in source order
        split: [(part.where, i, rec) for part in parts for i, rec in enumerate(part.records, start=1)]
        for split, parts in _reference_splits(source).items()
    }
    sizes = {split: len(rows) for split, rows in splits.items()}
    if set(sizes.values()) != {reflections.height}:
        raise InputError(
            f"the splits hold {sizes} rows but {wd.reflections} holds {reflections.height}: the scores are matched "
            "to the reflections by position, so both must come from the same source rows in the same order",
            path=source,
        )
    by_variant = {
        REFERENCE_SPLITS[split]: [_score_row(_lists(rec, where, split, i)) for where, i, rec in rows]
        for split, rows in splits.items()
    }
    ids, variants, pairs = pairs_of(reflections)
    table = [by_variant[v][n // len(VARIANTS)] for n, v in enumerate(variants)]
    frame = pl.DataFrame(
        {"id": ids, "variant": variants, **{c: [r[c] for r in table] for c in SCORE_COLUMNS}},
        schema={
            "id": pl.String,
            "variant": pl.String,
            **{c: pl.Float64 for c in ("ifd", "rifd", *REFERENCE_ORDER)},
            **{c: pl.Int32 for c in SCORE_COLUMNS if c.startswith("n_")},
            "status": pl.String,
            "reason": pl.String,
        },
    ).select("id", "variant", *SCORE_COLUMNS)
    meta = {
        "student": {
            "key": spec.key,
            "model": spec.model,
            "revision": spec.revision,
            "template": template,
            "scoring": "reference",
            "dtype": "float32",  # the reference script loads its model in fp32
            "base_model": spec.hub_id,
            # a Hub id as given; a local folder by its name only (its path names the user's folders)
            "imported_from": f"local:{Path(source).name}" if Path(source).exists() else source,
        },
        "max_length": max_length,
        "pairs": len(pairs),
        "pairs_sha256": pairs_digest(pairs),
    }
    write_scores(wd, spec.key, frame, meta)
    return ScoresImport(
        rows=reflections.height,
        pairs=len(pairs),
        missing=int((frame["status"] != STATUS_OK).sum()),
        source=source,
    )
