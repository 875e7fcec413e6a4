"""Chat-format rows: reading ``messages`` / ShareGPT ``conversations``, and writing rows back as turns.

A chat row is a list of turns. Its last assistant turn is the response, the user turn just before it is the
instruction, and every earlier turn (an optional system turn first, then finished user/assistant exchanges) is
the row's *context*. The context travels with the row through every stage: the student scores the response
given the whole context (``templates.render_prompt``), the teacher sees it while it rewrites the last exchange,
and the release writes every row as turns again (``messages``, and ``prompt`` / ``completion`` for
completion-only training). A single-turn chat without a system turn is the Alpaca row (instruction, "",
response), with the same id and the same scores. See docs/method.md for the method.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from recycled_datasets.errors import InputError
from recycled_datasets.records import CONTEXT_COLUMN, REFLECTION_COLUMNS, Turn
from recycled_datasets.templates import instruction_target

if TYPE_CHECKING:
    import pyarrow as pa

ROLES = ("system", "user", "assistant")
# ShareGPT's speaker names (the `from` of a `conversations` turn) and what they are in role/content form.
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
}
# The two column layouts of a chat row: (column, role key, content key, role names).
_FORMS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("messages", "role", "content", {r: r for r in ROLES}),
    ("conversations", "from", "value", SHAREGPT_ROLES),
)
_FIX = "(fix the row, or pass --skip-invalid)"

# Shown to the teacher before a reflection prompt when the row has earlier turns (our own wording).
TEACHER_CONTEXT = (
    "The example below is the last exchange of a longer conversation. Its earlier turns come first, as context "
    "only: do not critique, answer or rewrite them. Whatever you write replaces the last exchange and follows "
    "these turns, so it may rely on them.\n\n"
    "[Earlier turns]\n{turns}\n[End of earlier turns]\n\n"
)


def is_chat_record(record: Any) -> bool:
    """Whether a source record is a chat row (a ``messages`` or ``conversations`` list) rather than Alpaca fields.

    The turns win when a record has both, since only they carry the earlier turns (a released subset read
    back as a source has both).
    """
    return isinstance(record, dict) and any(record.get(column) is not None for column, *_ in _FORMS)


def chat_row(record: dict[str, Any], path: str, row: int) -> tuple[str, str, str, tuple[Turn, ...]]:
    """(instruction, "", response, context) of a chat record, or an :class:`InputError` naming row and turn."""
    column, role_key, content_key, roles = next(form for form in _FORMS if record.get(form[0]) is not None)
    value = record[column]
    if not isinstance(value, list) or not value:
        kind = type(value).__name__ if not isinstance(value, list) else "an empty list"
        raise InputError(f"must be a non-empty list of turns, found {kind} {_FIX}", path=path, row=row, field=column)
    turns = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise InputError(
                f"turn {number} must be an object with '{role_key}' and '{content_key}', found "
                f"{type(item).__name__} {_FIX}",
                path=path,
                row=row,
                field=column,
            )
        name, content = item.get(role_key), item.get(content_key)
        role = roles.get(name.strip().lower()) if isinstance(name, str) else None
        if role is None:
            raise InputError(
                f"turn {number} has the {role_key} {name!r}; expected one of {', '.join(sorted(roles))} {_FIX}",
                path=path,
                row=row,
                field=column,
            )
        if not isinstance(content, str) or not content.strip():
            found = "is empty" if isinstance(content, str) or content is None else f"is a {type(content).__name__}"
            raise InputError(
                f"turn {number} ({role}): its {content_key} {found}; every turn needs non-empty text {_FIX}",
                path=path,
                row=row,
                field=column,
            )
        turns.append(Turn(role, content))
    return split_turns(turns, path=path, row=row, field=column)


def split_turns(
    turns: Sequence[Turn], *, path: str | None = None, row: int | None = None, field: str = "messages"
) -> tuple[str, str, str, tuple[Turn, ...]]:
    """(instruction, "", response, context) of a conversation whose turns are in order.

    Order: an optional system turn first, then user and assistant turns alternating, starting with the user
    and ending with the assistant (the response).
    """
    offset = 1 if turns and turns[0].role == "system" else 0
    body = turns[offset:]
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            where = "only the first turn may be a system turn" if turn.role == "system" else "roles out of order"
            raise InputError(
                f"turn {i + 1 + offset} is a {turn.role} turn where a {expected} turn belongs ({where}: an optional "
                f"system turn, then user and assistant turns alternating, starting with the user) {_FIX}",
                path=path,
                row=row,
                field=field,
            )
    if not body or body[-1].role != "assistant":
        why = "has no assistant turn" if not any(t.role == "assistant" for t in body) else "ends with a user turn"
        raise InputError(
            f"{why}: the last turn must be the assistant's response {_FIX}", path=path, row=row, field=field
        )
    return body[-2].content, "", body[-1].content, tuple(turns[: len(turns) - 2])


# ---- the context in the workdir's tables ------------------------------------------------------------------
def context_cell(context: Sequence[Turn]) -> list[dict[str, str]] | None:
    """The context as stored in the ``context`` column (:func:`message_type`), or null for a row without one."""
    return [{"role": t.role, "content": t.content} for t in context] or None


def context_of(cell: Sequence[Mapping[str, str]] | str | None) -> tuple[Turn, ...]:
    """A ``context`` cell as turns. A workdir written before the column was typed holds JSON text: read too."""
    if isinstance(cell, str):
        cell = json.loads(cell)
    return tuple(Turn(t["role"], t["content"]) for t in cell or ())


def reflection_columns(columns: Sequence[str]) -> list[str]:
    """The reflections table's columns: the contract, plus ``context`` when the table has it."""
    return [*REFLECTION_COLUMNS, *([CONTEXT_COLUMN] if CONTEXT_COLUMN in columns else [])]


def with_context(frame: Any, rows: Sequence[Any]) -> Any:
    """``frame`` (one row per source row, same order as ``rows``) with a ``context`` column when any row has one."""
    import polars as pl

    if not any(r.context for r in rows):
        return frame
    kind = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    return frame.with_columns(pl.Series(CONTEXT_COLUMN, [context_cell(r.context) for r in rows], dtype=kind))


def contexts_of(frame: Any) -> list[tuple[Turn, ...]]:
    """The context of every row of a polars frame or arrow table (empty where it has no ``context`` column)."""
    arrow = hasattr(frame, "column_names")
    if CONTEXT_COLUMN not in (frame.column_names if arrow else frame.columns):
        return [()] * len(frame)
    cells = frame.column(CONTEXT_COLUMN).to_pylist() if arrow else frame[CONTEXT_COLUMN].to_list()
    return [context_of(cell) for cell in cells]


# ---- rows as turns again ----------------------------------------------------------------------------------
# The user turn of an (instruction, input) pair is the text the templates show and r-IFD scores as ``x'``.
user_turn = instruction_target


def turns_of(instruction: str, input: str, output: str, context: Sequence[Turn] = ()) -> list[dict[str, str]]:
    """The row as role/content turns: its context, the user turn, the response."""
    return [
        *({"role": t.role, "content": t.content} for t in context),
        {"role": "user", "content": user_turn(instruction, input)},
        {"role": "assistant", "content": output},
    ]


def message_type() -> pa.DataType:
    """Arrow type of a list of turns: ``list<struct<role: string, content: string>>``."""
    import pyarrow as pa

    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def add_chat_columns(table: pa.Table, contexts: Sequence[Sequence[Turn]]) -> pa.Table:
    """``table`` (with instruction/input/output) with ``messages``, ``prompt`` and ``completion`` after ``output``.

    ``prompt`` and ``completion`` split ``messages`` before the last assistant turn, the conversational
    prompt-completion form TRL's ``SFTTrainer`` recognises: it then computes the loss on that turn only.
    """
    import pyarrow as pa

    instructions = table.column("instruction").to_pylist()
    inputs = table.column("input").to_pylist()
    outputs = table.column("output").to_pylist()
    messages = [turns_of(i, n or "", o, c) for i, n, o, c in zip(instructions, inputs, outputs, contexts, strict=True)]
    kind = message_type()
    new = {
        "messages": pa.array(messages, type=kind),
        "prompt": pa.array([m[:-1] for m in messages], type=kind),
        "completion": pa.array([m[-1:] for m in messages], type=kind),
    }
    at = table.column_names.index("output") + 1
    for offset, (name, values) in enumerate(new.items()):
        table = table.add_column(at + offset, name, values)
    return table


def teacher_context(context: Sequence[Turn]) -> str:
    """The block put before a reflection prompt so the teacher sees the earlier turns ("" without any)."""
    if not context:
        return ""
    turns = "\n\n".join(f"{t.role.capitalize()}: {t.content}" for t in context)
    return TEACHER_CONTEXT.format(turns=turns)


def last_exchange_context(
    messages: Sequence[dict[str, Any]] | None,
    instruction: str,
    input: str,
    output: str,
    *,
    source: str | None,
    row: int,
) -> tuple[Turn, ...]:
    """The context of a released row from its ``messages``, checked against its training fields.

    The last two turns must be the row's user turn and response: a subset whose columns disagree was edited
    after the release, and training on it would not be training on what the student scored.
    """
    if messages is None:
        return ()
    turns = [Turn(str(m.get("role")), str(m.get("content"))) for m in messages]
    _, _, _, context = split_turns(turns, path=source, row=row)
    if turns[-2].content != user_turn(instruction, input) or turns[-1].content != output:
        raise InputError(
            "the last two turns of 'messages' are not the row's instruction/input and output; "
            "the columns disagree (was the subset edited?)",
            path=source,
            row=row,
            field="messages",
        )
    return context
