"""The reflect stage: source rows in, one row of four variants out per source row (docs/method.md, sections 1 and 2).

Per source row, three teacher calls: instruction reflection of ``ori`` -> ``ins``, response reflection of
``ori`` -> ``res``, and response reflection of ``ins`` -> ``both``, sent as soon as ``ins`` is known. When
``ins`` fell back to the original, ``both`` reflects the original pair instead (the very request ``res``
sends, so it is asked once) and its detail says so.

A reply whose sections cannot be used (unparsable, or refused by a quality gate: ``gates.py``) is asked once
more, sampled (``retry_temperature``, seed + 1) because a greedy retry would return the same text; if that
fails too, the variant falls back to the original field and the detail records which field and why, each
reason tagged with its name in brackets (``[cut_off]``, ``[unparsed]``, ...). A request the server refuses
(422) marks the variant failed. Every answer is looked up in the store before it is asked for and committed
there as it arrives, so the stage can be killed at any point and rerun (``run.TeacherRun``).

A run handshakes with its teacher once. The dry run (:func:`plan_rows`) and a re-judging run (``store_only``)
are this same run with the store-only teacher, which answers nothing: so they read the store exactly as a
real run would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from recycled_datasets.errors import ConfigError, TeacherError
from recycled_datasets.records import SourceRow
from recycled_datasets.teacher.base import Teacher
from recycled_datasets.teacher.config import ReflectConfig, is_local, make_teacher
from recycled_datasets.teacher.local import LocalTeacher, local_model_key
from recycled_datasets.teacher.prompts import PromptSet, load_prompts
from recycled_datasets.teacher.run import ProgressMeter, ReflectStats, TeacherRun
from recycled_datasets.teacher.store import AnswerStore
from recycled_datasets.teacher.variants import reflections_table

logger = logging.getLogger(__name__)


@dataclass
class ReflectResult:
    """The reflections table (``REFLECTION_COLUMNS``, source order), run counts, and what made them."""

    table: Any  # polars.DataFrame
    stats: ReflectStats
    teacher_id: str
    teacher_revision: str
    prompt_version: str


@dataclass
class ReflectPlan:
    """What a run would cost (``--dry-run``): calls not yet in the store and a token estimate.

    ``stored`` holds the keys of the stored answers the run would read, ``unsent`` those of the requests it
    would send that are known now (a ``both`` request waiting on a new ``ins`` answer is counted in
    ``calls`` only).
    """

    rows: int
    calls: int
    cached: int
    prompt_tokens: int
    max_output_tokens: int
    teacher_id: str
    prompt_version: str
    cache_checked: bool
    stored: frozenset[str] = field(default_factory=frozenset)
    unsent: frozenset[str] = field(default_factory=frozenset)


def _check_expected(expect: tuple[str, str] | None, teacher: Teacher, prompts: PromptSet, rows: int) -> None:
    if expect is not None and tuple(expect) != (teacher.teacher_id, prompts.version):
        raise ConfigError(
            f"the existing reflections are by {expect[0]} (prompt {expect[1]}), but {rows} rows would come from "
            f"{teacher.teacher_id} (prompt {prompts.version}); use the same teacher, or a new --workdir"
        )


async def _run_all(
    rows: list[SourceRow],
    config: ReflectConfig,
    meter: ProgressMeter,
    *,
    planning: bool = False,
    expect: tuple[str, str] | None = None,
) -> tuple[list[dict[str, Any]], TeacherRun]:
    prompts = load_prompts(config.instruction_prompt, config.response_prompt, config.prompt_version)
    teacher = make_teacher(config, health_timeout=min(config.client.health_timeout, 10.0) if planning else None)
    with AnswerStore.open(config.store_dir, durable=config.durable and not planning) as store:
        if config.retry_rejected and not planning:
            dropped = store.forget_rejected()
            if dropped:
                logger.info("resending %d requests the teacher refused before", dropped)
        run = TeacherRun(
            teacher,
            store,
            prompts,
            meter,
            sampling=config.sampling,
            gates=config.gates,
            planning=planning,
            resend_rejected=planning and config.retry_rejected,
        )
        records: list[dict[str, Any] | None] = [None] * len(rows)

        async def reflect(i: int, row: SourceRow) -> None:
            records[i] = await run.row(row)

        async with run.begun(store):
            _check_expected(expect, teacher, prompts, len(rows))
            await run.each(functools.partial(reflect, i, row) for i, row in enumerate(rows))
    return [r for r in records if r is not None], run


def _rows(rows: list[SourceRow], config: ReflectConfig) -> list[SourceRow]:
    rows = rows[: config.limit] if config.limit else list(rows)
    if not rows:
        raise ConfigError("no source rows to reflect")
    return rows


def reflect_rows(
    rows: list[SourceRow], config: ReflectConfig, *, expect: tuple[str, str] | None = None
) -> ReflectResult:
    """Reflect ``rows`` with the teacher of ``config``; see the module doc.

    ``expect`` is the (teacher id, prompt version) of the reflections these rows join: the run checks it right
    after its handshake and raises :class:`~recycled_datasets.errors.ConfigError` before any request when the
    teacher differs. Returns the reflections table (one row per source row, in order) and the run's counts.
    Raises :class:`~recycled_datasets.errors.TeacherError` when the teacher is unreachable or keeps failing;
    every answer received before that is in the store, and a rerun asks only for the rest.
    """
    from rich.progress import TextColumn

    from recycled_datasets.progress import progress

    rows = _rows(rows, config)
    columns = (TextColumn("{task.fields[rate]} calls/s"), TextColumn("retries {task.fields[retries]}"))
    meter = ProgressMeter()
    with progress(*columns) if config.progress else contextlib.nullcontext() as bar:
        if bar is not None:
            meter.bar, meter.task = bar, bar.add_task("teacher calls", total=3 * len(rows), rate="-", retries=0)
        records, run = asyncio.run(_run_all(rows, config, meter, expect=expect))
    stats = run.stats
    stats.rows = len(rows)
    run.count_into(stats)
    stats.prompt_tokens = run.calls.prompt_tokens
    stats.completion_tokens = run.calls.completion_tokens
    stats.seconds = round(time.monotonic() - meter.started, 3)
    logger.info(
        "reflected %d rows: %d calls sent (%d retries), %d from the store, %d fallbacks, %d failures",
        stats.rows,
        stats.sent,
        stats.retries,
        stats.cached,
        stats.fallbacks,
        stats.failures,
    )
    return ReflectResult(
        table=reflections_table(records),
        stats=stats,
        teacher_id=run.teacher.teacher_id,
        teacher_revision=run.teacher.teacher_revision,
        prompt_version=run.prompts.version,
    )


def plan_rows(rows: list[SourceRow], config: ReflectConfig) -> ReflectPlan:
    """What ``reflect_rows`` would send (``--dry-run``): the same run with the store-only teacher.

    Stored replies are parsed and judged as the run does, an unusable one leads to its retry (looked up too),
    and the ``both`` request of a row follows from its ``ins`` outcome. A request not stored yet counts as one
    call (identical requests once), and its answer, unknown until sent, as usable. The estimate counts about
    four characters per prompt token and the full output budget per call. When the teacher cannot be reached
    for its handshake (and the store does not remember one), the store is not checked: every call counts.
    """
    rows = _rows(rows, config)
    planning = replace(config, store_only=True, progress=False)
    try:
        _, run = asyncio.run(_run_all(rows, planning, ProgressMeter(), planning=True))
    except TeacherError as e:
        logger.warning("store not checked: %s", e)
        return _unchecked_plan(rows, config)
    unsent = run.unsent
    calls = len(unsent.keys) + unsent.waiting
    return ReflectPlan(
        rows=len(rows),
        calls=calls,
        cached=run.stats.cached,
        prompt_tokens=(sum(unsent.keys.values()) + unsent.waiting_chars) // 4,
        max_output_tokens=calls * config.output_budget,
        teacher_id=run.teacher.teacher_id or config.teacher,
        prompt_version=run.prompts.version,
        cache_checked=True,
        stored=frozenset(run.stored),
        unsent=frozenset(unsent.keys),
    )


def _unchecked_plan(rows: list[SourceRow], config: ReflectConfig) -> ReflectPlan:
    """Three calls a row and none stored: the plan of a run whose teacher could not tell its request keys."""
    prompts = load_prompts(config.instruction_prompt, config.response_prompt, config.prompt_version)
    chars = 0
    for row in rows:
        fields = (row.instruction, row.input, row.output, row.context)
        ins, res = prompts.instruction_request(*fields), prompts.response_request(*fields)
        chars += len(ins.system) + len(ins.user) + 2 * (len(res.system) + len(res.user))
    return ReflectPlan(
        rows=len(rows),
        calls=3 * len(rows),
        cached=0,
        prompt_tokens=chars // 4,
        max_output_tokens=3 * len(rows) * config.output_budget,
        teacher_id=config.teacher,
        prompt_version=prompts.version,
        cache_checked=False,
    )


def teacher_identity(config: ReflectConfig) -> tuple[str, str]:
    """(teacher id, prompt version) as a run with ``config`` records them; asks the server for its model name.

    A run checks this itself (``reflect_rows(..., expect=...)``) within its one handshake; this is for callers
    that need the identity without a run.
    """
    prompts = load_prompts(config.instruction_prompt, config.response_prompt, config.prompt_version)
    if is_local(config.teacher):
        return LocalTeacher(local_model_key(config.teacher)).teacher_id, prompts.version

    async def ask() -> str:
        teacher = make_teacher(replace(config, store_only=True))
        try:
            await teacher.begin()
        finally:
            await teacher.close()
        return teacher.teacher_id

    return asyncio.run(ask()), prompts.version


__all__ = [
    "ReflectConfig",
    "ReflectPlan",
    "ReflectResult",
    "ReflectStats",
    "make_teacher",
    "plan_rows",
    "reflect_rows",
    "teacher_identity",
]
