"""One source row and its three teacher outcomes made into one row of the reflections table.

A variant whose reply could not be used keeps the original field(s) and says why in its detail; ``ins`` folds
the input into its instruction, and ``both`` reflects ``ins`` (or, when ``ins`` has nothing new, the original
pair: then its detail says so). See docs/method.md, sections 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recycled_datasets.records import REFLECTION_COLUMNS, STATUS_FAILED, STATUS_FELL_BACK, STATUS_OK, SourceRow
from recycled_datasets.templates import instruction_target


@dataclass(frozen=True, slots=True)
class Outcome:
    """One variant's result: parsed fields, or why it fell back, or why the server refused it.

    ``unasked`` marks a request a store-only run could not answer: its reply is unknown until it is sent.
    """

    fields: dict[str, str] | None = None
    fallback: str | None = None
    rejected: str | None = None
    unasked: bool = False


# (instruction, input, output, status, detail) of one variant
_Fields = tuple[str, str, str, str, str | None]


def _ins_fields(row: SourceRow, ins: Outcome) -> _Fields:
    if ins.fields is not None:
        return ins.fields["instruction"], "", ins.fields["output"], STATUS_OK, None
    folded = " (the input is folded into the instruction: the ins variant has no input)" if row.input else ""
    instruction = instruction_target(row.instruction, row.input)
    if ins.rejected is not None:
        detail = f"teacher refused the request: {ins.rejected}; fields hold the originals{folded}"
        return instruction, "", row.output, STATUS_FAILED, detail
    detail = (
        f"ins_instruction and ins_output fell back to the original pair, since a new instruction is only "
        f"kept with its own answer{folded}: {ins.fallback}"
    )
    return instruction, "", row.output, STATUS_FELL_BACK, detail


def _response_fields(outcome: Outcome, original: str, name: str) -> tuple[str, str, str | None]:
    if outcome.fields is not None:
        return outcome.fields["output"], STATUS_OK, None
    if outcome.rejected is not None:
        return original, STATUS_FAILED, f"teacher refused the request: {outcome.rejected}; {name} holds the original"
    return original, STATUS_FELL_BACK, f"{name} fell back to the original: {outcome.fallback}"


def variant_record(row: SourceRow, ins: Outcome, res: Outcome, both: Outcome) -> dict[str, Any]:
    """The reflections row of ``row`` (``REFLECTION_COLUMNS``, by name) from its ins, res and both outcomes."""
    ins_fields = _ins_fields(row, ins)
    ins_instruction, _, ins_output, ins_status, _ = ins_fields
    res_fields = (row.instruction, row.input, *_response_fields(res, row.output, "res_output"))
    # both: the response reflection of ins, or of the original pair when ins has none
    both_output, both_status, both_detail = _response_fields(both, ins_output, "both_output")
    if ins.fields is None:
        note = (
            f"both_instruction fell back with ins ({ins_status}), so both reflects the original pair "
            f"(the same request as res)"
        )
        if both_status == STATUS_OK:
            both_status, both_detail = STATUS_FELL_BACK, note
        else:
            both_detail = f"{note}; {both_detail}"
    out: dict[str, Any] = {
        "id": row.id,
        "source_index": row.index,
        "ori_instruction": row.instruction,
        "ori_input": row.input,
        "ori_output": row.output,
    }
    both_fields = (ins_instruction, "", both_output, both_status, both_detail)
    for variant, fields in (("ins", ins_fields), ("res", res_fields), ("both", both_fields)):
        for column, value in zip(("instruction", "input", "output", "status", "detail"), fields, strict=True):
            out[f"{variant}_{column}"] = value
    return out


def reflections_table(records: list[dict[str, Any]]) -> Any:
    """The records as a polars frame in ``REFLECTION_COLUMNS`` order (all strings but ``source_index``)."""
    import polars as pl

    schema = {name: pl.String for name in REFLECTION_COLUMNS}
    schema["source_index"] = pl.Int64
    return pl.DataFrame(records, schema=schema).select(REFLECTION_COLUMNS)
