"""The typed records that flow between stages, and the column contracts of the files between them.

A source row becomes four *variants* (docs/method.md, section 1): ``ori`` (the source), ``ins`` (instruction
reflection), ``res`` (response reflection of ``ori``) and ``both`` (response reflection of ``ins``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Variant = Literal["ori", "ins", "res", "both"]
VARIANTS: tuple[Variant, ...] = ("ori", "ins", "res", "both")

# Per-variant status in the reflections table.
STATUS_OK = "ok"  # the teacher's text was parsed and used
STATUS_FELL_BACK = "fell_back"  # a field fell back to the original (see the detail column)
STATUS_FAILED = "failed"  # the call itself failed (e.g. a 422); fields hold the originals

# What `srecycle finetune` records in its output folder: read back by its card, `push-model` and `generate`.
FINETUNE_FILE = "srecycle_finetune.json"


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of a conversation: ``role`` is ``system``, ``user`` or ``assistant``."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One (instruction, input, response) row of a source, with a deterministic id.

    ``index`` is the 0-based position in the source; ``id`` depends on the content only (plus an occurrence
    suffix for exact duplicates), so the same file always yields the same ids. ``context`` holds the turns a
    chat row has before its last user turn (its system turn and earlier exchanges); it is empty for Alpaca rows
    and single-turn chats, whose ids are those of the same Alpaca row.
    """

    id: str
    index: int
    instruction: str
    input: str
    output: str
    context: tuple[Turn, ...] = ()


@dataclass(frozen=True, slots=True)
class Pair:
    """What a student scores: one instruction (with optional input) and its response, after ``context``."""

    instruction: str
    input: str
    output: str
    context: tuple[Turn, ...] = ()


def content_id(instruction: str, input: str, output: str, context: Sequence[Turn] = ()) -> str:
    """A short stable hash of a row's content: the basis of row ids and cache keys.

    A row without context hashes its three fields only, so Alpaca rows keep the ids they always had.
    """
    text = "\x1f".join((instruction, input, output))
    for turn in context:
        text += f"\x1e{turn.role}\x1f{turn.content}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def assign_ids(rows: Sequence[tuple[str, str, str] | tuple[str, str, str, tuple[Turn, ...]]]) -> list[SourceRow]:
    """Turn (instruction, input, output[, context]) tuples into :class:`SourceRow` with unique deterministic ids."""
    seen: dict[str, int] = {}
    out: list[SourceRow] = []
    for index, fields in enumerate(rows):
        instruction, input_, output = fields[:3]
        context: tuple[Turn, ...] = fields[3] if len(fields) > 3 else ()  # type: ignore[misc]
        base = content_id(instruction, input_, output, context)
        count = seen.get(base, 0) + 1
        seen[base] = count
        row_id = base if count == 1 else f"{base}-{count}"
        out.append(SourceRow(row_id, index, instruction, input_, output, context))
    return out


# ---- File contracts between stages -------------------------------------------------------------------------
# Reflections table (teacher stage output, student independent): one row per source row.
#   id, source_index,
#   ori_instruction, ori_input, ori_output,
#   ins_instruction, ins_input (always ""), ins_output, ins_status, ins_detail,
#   res_instruction, res_input, res_output, res_status, res_detail,
#   both_instruction, both_input (always ""), both_output, both_status, both_detail
# status is one of STATUS_*; detail is null when ok, else which field fell back / failed and why.
# A workdir built from chat rows adds CONTEXT_COLUMN (see recycled_datasets/chat.py); without it every row has
# no context, so workdirs of Alpaca-form sources are unchanged.
REFLECTION_COLUMNS: tuple[str, ...] = (
    "id",
    "source_index",
    *(f"{v}_{f}" for v in VARIANTS for f in ("instruction", "input", "output")),
    *(f"{v}_{f}" for v in VARIANTS[1:] for f in ("status", "detail")),
)

CONTEXT_COLUMN = "context"

# Score table (scoring stage output): one row per scored pair. Their meaning: docs/method.md, section 3.
SCORE_COLUMNS: tuple[str, ...] = (
    "ifd",
    "rifd",
    "loss_response_cond",
    "loss_response_direct",
    "loss_instruction_cond",
    "loss_instruction_direct",
    "n_response_tokens",
    "n_instruction_tokens",
    "n_prompt_tokens",
    "n_reverse_prompt_tokens",
    "status",
    "reason",
)

# Subset table (selection output, one Hub config per student): the training fields, then provenance.
SUBSET_COLUMNS: tuple[str, ...] = (
    "instruction",
    "input",
    "output",
    "id",
    "variant",
    "ifd",
    "rifd",
    "student",
    "teacher",
)
# The release adds the row as chat turns next to the training fields (see recycled_datasets/chat.py):
# ``messages`` (every turn), ``prompt`` (all but the last assistant turn) and ``completion`` (that turn).
CHAT_COLUMNS: tuple[str, ...] = ("messages", "prompt", "completion")
RELEASE_SUBSET_COLUMNS: tuple[str, ...] = (*SUBSET_COLUMNS[:3], *CHAT_COLUMNS, *SUBSET_COLUMNS[3:])
