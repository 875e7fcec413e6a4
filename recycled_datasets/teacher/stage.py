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
there as it arrives, so the stage can be killed at any point and rerun.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recycled_datasets.errors import ConfigError, RecycledError
from recycled_datasets.records import (
    REFLECTION_COLUMNS,
    STATUS_FAILED,
    STATUS_FELL_BACK,
    STATUS_OK,
    SourceRow,
)
from recycled_datasets.teacher.client import (
    APIS,
    DEFAULT_MAX_RETRY_SECONDS,
    DEFAULT_TIMEOUT,
    CallStats,
    HttpTeacher,
    Rejected,
    RetryPolicy,
    split_urls,
)
from recycled_datasets.teacher.gates import NOT_ASKED, UNPARSED, GateConfig, Scaffold, judge_section, reason_counts
from recycled_datasets.teacher.local import LocalTeacher, local_model_key
from recycled_datasets.teacher.prompts import (
    BETTER_ANSWER,
    NEW_ANSWER,
    NEW_INSTRUCTION,
    PromptSet,
    load_prompts,
    parse_sections,
)
from recycled_datasets.teacher.store import ANSWER_OK, ANSWER_REJECTED, STORE_FILE, AnswerStore, request_key
from recycled_datasets.templates import instruction_target

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS_HTTP = 1024
DEFAULT_MAX_NEW_TOKENS_LOCAL = 256


def is_local(teacher: str) -> bool:
    return teacher == "local" or teacher.startswith("local:")


@dataclass
class ReflectConfig:
    """Everything the reflect stage needs besides the rows. The CLI fills the same fields.

    Attributes:
        teacher: server URL(s), comma-separated (``http://host:8080`` for TGI, ``http://host:port/v1`` for
            OpenAI-compatible), or ``local[:MODEL]`` for the in-process transformers teacher.
        store_dir: folder of the answer store (``DIR/teacher`` in a workdir).
        concurrency: requests in flight per server (default: the server's ``max_concurrent_requests`` from
            ``/info``, else 16); for the local teacher, the generation batch size (default 8).
        max_new_tokens: output budget per call (default 1024 for servers, 256 for the local teacher), lowered
            per request to what the server's context leaves after the prompt.
        limit: reflect only the first N rows.
        temperature: 0 is greedy decoding (the default and the paper's setting).
        seed: generation seed sent with every request.
        retry_temperature: sampling temperature of the one retry after an unusable reply when decoding is greedy.
        instruction_prompt / response_prompt: the user's prompt files (see ``teacher/prompts.py``).
        prompt_version: the name answers are cached under (default: the packaged version, or a hash of the
            user's prompt files).
        api: ``chat`` (``/v1/chat/completions``, every server) or ``generate`` (TGI's native route with the
            teacher's chat template applied here; needs ``tokenizer`` or a Hub model id the server reports).
        tokenizer: the teacher's tokenizer (students-table key, Hub id or folder), for exact prompt lengths.
        teacher_name: the model name to cache answers under when the server does not report one.
        timeout: seconds to wait for one answer before retrying it (default 300).
        health_timeout: seconds to wait at start for the servers to report healthy.
        max_retries: retries per request for 429, 5xx, timeouts and dropped connections.
        max_retry_seconds: the most one request may take, attempts and waits together (default 1800).
        backoff_base / backoff_max: the retry delay is ``backoff_base * 2**attempt`` (jittered), capped.
        durable: fsync every committed answer (survives power loss, not only a killed process).
        retry_rejected: resend requests the server refused before (after raising its limits).
        progress: show a progress bar (still off when not on a terminal or with ``--quiet``).
        gates: the quality gates every parsed section must pass (``teacher/gates.py``).
        store_only: re-judge from the answer store and never call the teacher (the local model's weights are
            not even loaded); a request not in the store makes its variant fall back with the reason
            ``not_asked``. Builds use it when only the gates changed.
    """

    teacher: str = "local"
    store_dir: Path = Path("teacher")
    concurrency: int | None = None
    max_new_tokens: int | None = None
    limit: int | None = None
    temperature: float = 0.0
    seed: int = 0
    retry_temperature: float = 0.7
    instruction_prompt: Path | None = None
    response_prompt: Path | None = None
    prompt_version: str | None = None
    api: str = "chat"
    tokenizer: str | None = None
    teacher_name: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    health_timeout: float = 300.0
    max_retries: int = 8
    max_retry_seconds: float = DEFAULT_MAX_RETRY_SECONDS
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    durable: bool = True
    retry_rejected: bool = False
    progress: bool = True
    gates: GateConfig = field(default_factory=GateConfig)
    store_only: bool = False

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)
        if not self.teacher.strip():
            raise ConfigError("--teacher is empty: give a server URL or local[:MODEL]")
        if is_local(self.teacher):
            local_model_key(self.teacher)
        else:
            split_urls(self.teacher)
        if self.api not in APIS:
            raise ConfigError(f"unknown --api {self.api!r}: choose {' or '.join(APIS)}")
        for name in ("concurrency", "max_new_tokens", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        if self.temperature < 0 or self.retry_temperature < 0:
            raise ConfigError("temperatures must be >= 0 (0 is greedy decoding)")
        if self.timeout <= 0 or self.health_timeout <= 0 or self.max_retry_seconds <= 0:
            raise ConfigError("timeouts must be positive numbers of seconds")
        if self.max_retries < 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ConfigError("max_retries and the backoff delays must be >= 0")

    @property
    def output_budget(self) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return DEFAULT_MAX_NEW_TOKENS_LOCAL if is_local(self.teacher) else DEFAULT_MAX_NEW_TOKENS_HTTP


@dataclass
class ReflectStats:
    """Counts of one run. ``sent`` includes retries; ``cached`` answers were read from the store."""

    rows: int = 0
    sent: int = 0
    cached: int = 0
    shared: int = 0  # identical requests asked once for several variants or rows
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    parse_retries: int = 0
    # Failed attempts per reason (a gate's name, ``unparsed``, ``not_asked``), retries that succeeded included.
    rejections: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0  # variants that fell back to an original field
    failures: int = 0  # variants whose request was refused
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0  # of ``seconds``: connecting to the servers, or loading the local model

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    """What a run would cost (``--dry-run``): calls not yet in the store and a token estimate."""

    rows: int
    calls: int
    cached: int
    prompt_tokens: int
    max_output_tokens: int
    teacher_id: str
    prompt_version: str
    cache_checked: bool


@dataclass
class ProgressMeter:
    """The progress bar of a run: calls done out of calls planned, requests/s sent and retries so far."""

    bar: Any = None  # rich.progress.Progress, or None without a display
    task: Any = None
    started: float = field(default_factory=time.monotonic)

    def done(self, calls: CallStats) -> None:
        if self.bar is not None:
            rate = calls.sent / max(time.monotonic() - self.started, 1e-9)
            self.bar.update(self.task, advance=1, rate=f"{rate:.1f}", retries=calls.retries)

    def one_more(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=self.bar.tasks[self.task].total + 1)


def _sampling(config: ReflectConfig, attempt: int) -> tuple[float, int]:
    """(temperature, seed) of a request's first ask, or of its one retry after an unusable reply."""
    if attempt == 0:
        return config.temperature, config.seed
    return config.temperature or config.retry_temperature, config.seed + attempt


@dataclass(frozen=True)
class Judge:
    """What the quality gates compare a reply with: the gate settings, the prompts' scaffold, the finish reason."""

    gates: GateConfig = field(default_factory=GateConfig)
    scaffold: Scaffold = field(default_factory=Scaffold)
    finish_reason: str | None = None

    def __call__(self, marker: str, *, instruction: str | None = None, original: str | None = None) -> Any:
        def judge(text: str, closed: bool) -> Any:
            return judge_section(
                text,
                marker=marker,
                finish_reason=self.finish_reason,
                closed=closed,
                scaffold=self.scaffold,
                config=self.gates,
                instruction=instruction,
                original=original,
            )

        return judge


def _why(section: Any) -> str:
    # Every failure reason starts with its name in brackets, so runs and cards can count them.
    return section.reason if section.gate is not None else f"[{UNPARSED}] {section.reason}"


def parse_instruction_reply(
    prompts: PromptSet, text: str, *, original: str = "", judge: Judge | None = None
) -> tuple[dict[str, str] | None, str | None]:
    """The new instruction and its answer from an instruction-reflection reply, or why there are none.

    ``original`` is the instruction being reflected (without its input), which the new one must not echo.
    The run and the dry run (:func:`plan_rows`) both parse with this, so they agree on which replies count.
    """
    judge = judge or Judge(scaffold=prompts.scaffold())
    ph = prompts.placeholders
    instruction = parse_sections(
        text, NEW_INSTRUCTION, ph.get(NEW_INSTRUCTION, ()), judge(NEW_INSTRUCTION, original=original)
    )
    if not instruction.ok:
        return None, _why(instruction)
    answer = parse_sections(text, NEW_ANSWER, ph.get(NEW_ANSWER, ()), judge(NEW_ANSWER, instruction=instruction.text))
    if not answer.ok:
        return None, _why(answer)
    return {"instruction": instruction.text or "", "output": answer.text or ""}, None


def parse_response_reply(
    prompts: PromptSet, text: str, *, instruction: str = "", original: str = "", judge: Judge | None = None
) -> tuple[dict[str, str] | None, str | None]:
    """The better answer from a response-reflection reply, or why there is none.

    ``instruction`` is what the answer answers (without its input) and ``original`` the answer it improves on.
    """
    judge = judge or Judge(scaffold=prompts.scaffold())
    answer = parse_sections(
        text,
        BETTER_ANSWER,
        prompts.placeholders.get(BETTER_ANSWER, ()),
        judge(BETTER_ANSWER, instruction=instruction, original=original),
    )
    return ({"output": answer.text or ""}, None) if answer.ok else (None, _why(answer))


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One variant's result: parsed fields, or why it fell back, or why the server refused it."""

    fields: dict[str, str] | None = None
    fallback: str | None = None
    rejected: str | None = None


def make_teacher(config: ReflectConfig, *, health_timeout: float | None = None) -> HttpTeacher | LocalTeacher:
    """The teacher ``config`` names (servers or the in-process model), not yet started; the judge uses it too."""
    if is_local(config.teacher):
        return LocalTeacher(local_model_key(config.teacher), batch_size=config.concurrency)
    tokenizer = _load_tokenizer(config.tokenizer) if config.tokenizer else None
    return HttpTeacher(
        split_urls(config.teacher),
        api=config.api,
        concurrency=config.concurrency,
        timeout=config.timeout,
        health_timeout=health_timeout or config.health_timeout,
        retry=RetryPolicy(
            max_retries=config.max_retries,
            base=config.backoff_base,
            cap=config.backoff_max,
            max_seconds=config.max_retry_seconds,
        ),
        teacher_name=config.teacher_name,
        tokenizer=tokenizer,
        seed=config.seed,
    )


def _load_tokenizer(name: str) -> Any:
    """The teacher's tokenizer from a students-table key, a Hub id, a folder or a .gguf file.

    Resolved like a student (``--student`` accepts the same names), so both stages find a model the same way.
    """
    from recycled_datasets.models import load_tokenizer, resolve_student

    try:
        spec = resolve_student(name)
    except ConfigError as e:
        raise ConfigError(f"teacher tokenizer: {e}") from e
    return load_tokenizer(spec)


async def start_teacher(
    config: ReflectConfig,
    teacher: HttpTeacher | LocalTeacher,
    *,
    generate: bool = True,
    store: AnswerStore | None = None,
) -> None:
    """Start the teacher; servers whose handshake ``store`` remembers are contacted only when a request must be
    sent, so a run whose answers are all stored works with the servers down."""
    if isinstance(teacher, LocalTeacher):
        await teacher.start(generate=generate)
    else:
        remembered = store.recall_teacher(teacher.signature) if store is not None else None
        if remembered is not None:
            teacher.restore(remembered)
        else:
            await teacher.start()
            if store is not None:
                store.remember_teacher(teacher.signature, teacher.handshake())
    if isinstance(teacher, HttpTeacher) and teacher.api == "generate" and teacher.tokenizer is None:
        teacher.tokenizer = await asyncio.to_thread(_load_tokenizer, teacher.teacher_id)


def teacher_identity(config: ReflectConfig) -> tuple[str, str]:
    """(teacher id, prompt version) as a run with ``config`` records them; asks the server for its model name."""
    prompts = load_prompts(config.instruction_prompt, config.response_prompt, config.prompt_version)
    if is_local(config.teacher):
        return LocalTeacher(local_model_key(config.teacher)).teacher_id, prompts.version

    async def ask() -> str:
        teacher = make_teacher(config)
        try:
            await teacher.start()
        finally:
            await teacher.close()
        return teacher.teacher_id

    return asyncio.run(ask()), prompts.version


class TeacherRun:
    """The state of one reflect run: teacher, store, prompts, counters, and requests in flight."""

    def __init__(
        self,
        config: ReflectConfig,
        teacher: HttpTeacher | LocalTeacher,
        store: AnswerStore,
        prompts: PromptSet,
        meter: ProgressMeter,
    ):
        self.config = config
        self.teacher = teacher
        self.store = store
        self.prompts = prompts
        self.calls = CallStats()
        self.stats = ReflectStats()
        self.meter = meter
        self.scaffold = prompts.scaffold()
        self._inflight: dict[str, asyncio.Future[tuple[str, str | None]]] = {}
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="answer-store")

    def close(self) -> None:
        self._io.shutdown(wait=True)

    async def _store(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # SQLite work runs in the store's own thread: an fsync per answer must not stall the event loop that
        # keeps the other requests of the window moving.
        return await asyncio.get_running_loop().run_in_executor(self._io, functools.partial(call, *args, **kwargs))

    async def ask(self, prompt: str, attempt: int) -> tuple[str, str | None]:
        """(reply text, finish reason) of one request: from the store, from a twin in flight, or from the teacher.

        The request is registered as in flight before the store is read and stays so until its answer is
        committed, so an identical request (the ``both`` of a row whose ``ins`` fell back, a duplicate row)
        always finds either the one in flight or the stored answer, and is never paid for twice.
        """
        temperature, seed = _sampling(self.config, attempt)
        try:
            payload = self.teacher.prepare(
                prompt, max_new_tokens=self.config.output_budget, temperature=temperature, seed=seed
            )
        except Rejected:
            self.meter.done(self.calls)
            raise
        key = request_key(self.teacher.cache_id, self.prompts.version, payload)
        twin = self._inflight.get(key)
        if twin is not None:
            self.stats.shared += 1
            self.meter.done(self.calls)
            return await asyncio.shield(twin)
        future: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._inflight[key] = future
        try:
            answer = await self._answer(key, payload)
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(e)
            raise
        else:
            future.set_result(answer)
            return answer
        finally:
            del self._inflight[key]
            self.meter.done(self.calls)

    async def _answer(self, key: str, payload: dict[str, Any]) -> tuple[str, str | None]:
        stored = await self._store(self.store.get, key)
        if stored is not None:
            self.stats.cached += 1
            if stored.status == ANSWER_REJECTED:
                raise Rejected(stored.error or "refused by the teacher")
            return stored.text or "", stored.finish_reason
        if self.config.store_only:
            raise _NotStored()
        record = {"teacher": self.teacher.cache_id, "prompt_version": self.prompts.version, "request": payload}
        try:
            reply = await self.teacher.complete(payload, self.calls)
        except Rejected as e:
            await self._store(self.store.put, key, **record, status=ANSWER_REJECTED, error=e.reason)
            raise
        await self._store(
            self.store.put,
            key,
            **record,
            status=ANSWER_OK,
            text=reply.text,
            finish_reason=reply.finish_reason,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
        )
        return reply.text, reply.finish_reason

    async def reflect(
        self, render: Callable[[], str], parse: Callable[[str, Judge], tuple[dict[str, str] | None, str | None]]
    ) -> _Outcome:
        """Ask, parse and judge, ask once more if unusable, else report the fallback with both reasons."""
        reasons = []
        prompt = render()
        for attempt in range(2):
            try:
                text, finish = await self.ask(prompt, attempt)
            except Rejected as e:
                prior = f" (after {reasons[0]})" if reasons else ""
                return _Outcome(rejected=f"{e.reason}{prior}")
            except _NotStored:
                why = f"[{NOT_ASKED}] not in the answer store, and this run re-judges stored answers only"
                reasons.append(f"attempt {attempt + 1}: {why}")
                _count(self.stats.rejections, why)
                break
            fields, why = parse(text, Judge(self.config.gates, self.scaffold, finish))
            if fields is not None:
                return _Outcome(fields=fields)
            _count(self.stats.rejections, why)
            cut = " (the reply ran out of tokens)" if finish == "length" and "[cut_off]" not in (why or "") else ""
            reasons.append(f"attempt {attempt + 1}: {why}{cut}")
            if attempt == 0:
                self.stats.parse_retries += 1
                self.meter.one_more()
        return _Outcome(fallback="; ".join(reasons))

    async def row(self, row: SourceRow) -> dict[str, Any]:
        async def response_reflection(instruction: str, input: str, output: str) -> _Outcome:
            return await self.reflect(
                lambda: self.prompts.render_response(instruction, input, output, row.context),
                lambda text, judge: parse_response_reply(
                    self.prompts, text, instruction=instruction, original=output, judge=judge
                ),
            )

        async def ins_then_both() -> tuple[_Outcome, _Outcome]:
            ins = await self.reflect(
                lambda: self.prompts.render_instruction(row.instruction, row.input, row.output, row.context),
                lambda text, judge: parse_instruction_reply(self.prompts, text, original=row.instruction, judge=judge),
            )
            if ins.fields is not None:
                both = await response_reflection(ins.fields["instruction"], "", ins.fields["output"])
            else:
                both = await response_reflection(row.instruction, row.input, row.output)
            return ins, both

        async with asyncio.TaskGroup() as group:
            first = group.create_task(ins_then_both())
            res_task = group.create_task(response_reflection(row.instruction, row.input, row.output))
        ins, both = first.result()
        return self.record(row, ins, res_task.result(), both)

    def record(self, row: SourceRow, ins: _Outcome, res: _Outcome, both: _Outcome) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": row.id,
            "source_index": row.index,
            "ori_instruction": row.instruction,
            "ori_input": row.input,
            "ori_output": row.output,
        }
        folded = " (the input is folded into the instruction: the ins variant has no input)" if row.input else ""
        # ins
        ins_detail: str | None = None
        if ins.fields is not None:
            ins_instruction, ins_output, ins_status = ins.fields["instruction"], ins.fields["output"], STATUS_OK
        else:
            ins_instruction, ins_output = instruction_target(row.instruction, row.input), row.output
            if ins.rejected is not None:
                ins_status = STATUS_FAILED
                ins_detail = f"teacher refused the request: {ins.rejected}; fields hold the originals{folded}"
            else:
                ins_status = STATUS_FELL_BACK
                ins_detail = (
                    f"ins_instruction and ins_output fell back to the original pair, since a new instruction is only "
                    f"kept with its own answer{folded}: {ins.fallback}"
                )
        out.update(
            ins_instruction=ins_instruction,
            ins_input="",
            ins_output=ins_output,
            ins_status=ins_status,
            ins_detail=ins_detail,
        )
        # res
        res_output, res_status, res_detail = self._response_fields(res, row.output, "res_output")
        out.update(
            res_instruction=row.instruction,
            res_input=row.input,
            res_output=res_output,
            res_status=res_status,
            res_detail=res_detail,
        )
        # both: the response reflection of ins, or of the original pair when ins has none
        both_output, both_status, both_detail = self._response_fields(both, ins_output, "both_output")
        if ins.fields is None:
            note = (
                f"both_instruction fell back with ins ({ins_status}), so both reflects the original pair "
                f"(the same request as res)"
            )
            if both_status == STATUS_OK:
                both_status, both_detail = STATUS_FELL_BACK, note
            else:
                both_detail = f"{note}; {both_detail}"
        out.update(
            both_instruction=ins_instruction,
            both_input="",
            both_output=both_output,
            both_status=both_status,
            both_detail=both_detail,
        )
        for variant in ("ins", "res", "both"):
            if out[f"{variant}_status"] == STATUS_FELL_BACK:
                self.stats.fallbacks += 1
            elif out[f"{variant}_status"] == STATUS_FAILED:
                self.stats.failures += 1
        return out

    @staticmethod
    def _response_fields(outcome: _Outcome, original: str, name: str) -> tuple[str, str, str | None]:
        if outcome.fields is not None:
            return outcome.fields["output"], STATUS_OK, None
        if outcome.rejected is not None:
            detail = f"teacher refused the request: {outcome.rejected}; {name} holds the original"
            return original, STATUS_FAILED, detail
        return original, STATUS_FELL_BACK, f"{name} fell back to the original: {outcome.fallback}"


class _NotStored(Exception):
    """A store-only run met a request that is not in the store."""


def _count(counts: dict[str, int], why: str | None) -> None:
    for reason in reason_counts([why]):
        counts[reason] = counts.get(reason, 0) + 1


def _consume(future: asyncio.Future[Any]) -> None:
    # The first caller re-raises the error itself; twins waiting on the future get it too. Reading it here
    # keeps asyncio from reporting it a second time as "never retrieved" when no twin was waiting.
    if not future.cancelled():
        future.exception()


def _table(records: list[dict[str, Any]]) -> Any:
    import polars as pl

    schema = {name: pl.String for name in REFLECTION_COLUMNS}
    schema["source_index"] = pl.Int64
    return pl.DataFrame(records, schema=schema).select(REFLECTION_COLUMNS)


def first_user_error(group: BaseExceptionGroup) -> BaseException:
    """The error to show from a task group's failures: the first the user can act on, else the first."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return first_user_error(error)
        if isinstance(error, RecycledError):
            return error
    return group.exceptions[0]


async def _run_all(
    rows: list[SourceRow], config: ReflectConfig, meter: ProgressMeter
) -> tuple[list[dict[str, Any]], TeacherRun]:
    prompts = load_prompts(config.instruction_prompt, config.response_prompt, config.prompt_version)
    teacher = make_teacher(config)
    with AnswerStore.open(config.store_dir, durable=config.durable) as store:
        if config.retry_rejected:
            dropped = store.forget_rejected()
            if dropped:
                logger.info("resending %d requests the teacher refused before", dropped)
        run = TeacherRun(config, teacher, store, prompts, meter)
        records: list[dict[str, Any] | None] = [None] * len(rows)

        try:
            # Inside the try: a server that never gets healthy or refuses the token must not leave the
            # connection pools that start() opened behind.
            started = time.monotonic()
            await start_teacher(config, teacher, generate=not config.store_only, store=store)
            run.stats.setup_seconds = round(time.monotonic() - started, 3)
            # Enough rows under way to keep the window full (each row has one or two calls waiting at a time).
            rows_in_flight = asyncio.Semaphore(max(4, 2 * teacher.window))

            async def one(i: int, row: SourceRow) -> None:
                try:
                    records[i] = await run.row(row)
                finally:
                    rows_in_flight.release()

            async with asyncio.TaskGroup() as group:
                for i, row in enumerate(rows):
                    await rows_in_flight.acquire()
                    group.create_task(one(i, row))
        except BaseExceptionGroup as group_error:
            raise first_user_error(group_error) from group_error
        finally:
            await teacher.close()
            run.close()  # waits for the last commit before the store closes
    return [r for r in records if r is not None], run


def reflect_rows(rows: list[SourceRow], config: ReflectConfig) -> ReflectResult:
    """Reflect ``rows`` with the teacher of ``config``; see the module doc.

    Returns the reflections table (one row per source row, in order) and the run's counts. Raises
    :class:`~recycled_datasets.errors.TeacherError` when the teacher is unreachable or keeps failing; every
    answer received before that is in the store, and a rerun asks only for the rest.
    """
    from rich.progress import TextColumn

    from recycled_datasets.progress import progress

    rows = rows[: config.limit] if config.limit else list(rows)
    if not rows:
        raise ConfigError("no source rows to reflect")
    columns = (TextColumn("{task.fields[rate]} calls/s"), TextColumn("retries {task.fields[retries]}"))
    meter = ProgressMeter()
    with progress(*columns) if config.progress else contextlib.nullcontext() as bar:
        if bar is not None:
            meter.bar, meter.task = bar, bar.add_task("teacher calls", total=3 * len(rows), rate="-", retries=0)
        records, run = asyncio.run(_run_all(rows, config, meter))
    stats = run.stats
    stats.rows = len(rows)
    stats.sent = run.calls.sent
    stats.retries = run.calls.retries
    stats.retry_reasons = dict(run.calls.retry_reasons)
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
        table=_table(records),
        stats=stats,
        teacher_id=run.teacher.teacher_id,
        teacher_revision=run.teacher.teacher_revision,
        prompt_version=run.prompts.version,
    )


def plan_rows(rows: list[SourceRow], config: ReflectConfig) -> ReflectPlan:
    """What ``reflect_rows`` would send (``--dry-run``): calls not in the store yet, and a token estimate.

    The store is read the way the run reads it: a stored reply is parsed with the run's parser, an unusable
    one leads to its sampled retry (looked up too), and the ``both`` request of a row follows from the stored
    ``ins`` outcome. A request not stored yet counts as one call (identical requests once), and its
    answer, unknown until sent, as usable. The estimate counts about four characters per prompt token and
    the full output budget per call.
    """
    rows = rows[: config.limit] if config.limit else list(rows)
    prompts = load_prompts(config.instruction_prompt, config.response_prompt, config.prompt_version)
    budget = config.output_budget

    async def check() -> ReflectPlan:
        teacher = make_teacher(config, health_timeout=min(config.health_timeout, 10.0))
        try:
            checked = True
            store = None
            if (Path(config.store_dir) / STORE_FILE).is_file():
                store = AnswerStore.open(config.store_dir, durable=False)
            try:
                await start_teacher(config, teacher, generate=False, store=store)
            except RecycledError as e:
                logger.warning("store not checked: %s", e)
                checked = False
            if checked and store is None:
                store = AnswerStore.open(config.store_dir, durable=False)
            elif not checked and store is not None:
                store.close()
                store = None
            try:
                counts = _PlanCounts()
                scaffold = prompts.scaffold()

                def judged(parse: Callable[..., Any], **context: str) -> Callable[[str, str | None], Any]:
                    def run(text: str, finish: str | None) -> Any:
                        return parse(prompts, text, judge=Judge(config.gates, scaffold, finish), **context)

                    return run

                for row in rows:
                    res_prompt = prompts.render_response(row.instruction, row.input, row.output, row.context)
                    ins_prompt = prompts.render_instruction(row.instruction, row.input, row.output, row.context)
                    res_parse = judged(parse_response_reply, instruction=row.instruction, original=row.output)
                    ins_parse = judged(parse_instruction_reply, original=row.instruction)
                    known, ins = _plan_variant(store, teacher, prompts, config, ins_prompt, ins_parse, counts)
                    _plan_variant(store, teacher, prompts, config, res_prompt, res_parse, counts)
                    if not known:  # ins is still to be asked: both will reflect its answer, one more call
                        counts.calls += 1
                        counts.prompt_chars += len(res_prompt)
                        continue
                    both_prompt, both_parse = res_prompt, res_parse
                    if ins is not None:
                        both_prompt = prompts.render_response(ins["instruction"], "", ins["output"], row.context)
                        both_parse = judged(
                            parse_response_reply, instruction=ins["instruction"], original=ins["output"]
                        )
                    _plan_variant(store, teacher, prompts, config, both_prompt, both_parse, counts)
            finally:
                if store is not None:
                    store.close()
        finally:
            await teacher.close()
        return ReflectPlan(
            rows=len(rows),
            calls=counts.calls,
            cached=counts.cached,
            prompt_tokens=counts.prompt_chars // 4,
            max_output_tokens=counts.calls * budget,
            teacher_id=teacher.teacher_id or config.teacher,
            prompt_version=prompts.version,
            cache_checked=checked,
        )

    return asyncio.run(check())


@dataclass
class _PlanCounts:
    calls: int = 0
    cached: int = 0
    prompt_chars: int = 0
    unsent: set[str] = field(default_factory=set)


def _plan_variant(
    store: AnswerStore | None,
    teacher: HttpTeacher | LocalTeacher,
    prompts: PromptSet,
    config: ReflectConfig,
    prompt: str,
    parse: Callable[[str, str | None], tuple[dict[str, str] | None, str | None]],
    counts: _PlanCounts,
) -> tuple[bool, dict[str, str] | None]:
    """Count one variant's requests as :meth:`TeacherRun.reflect` would make them.

    Returns (outcome known from the store?, the parsed fields, or None when the variant fell back or failed).
    """
    for attempt in range(2):
        temperature, seed = _sampling(config, attempt)
        counts.prompt_chars += len(prompt)
        if store is None:
            counts.calls += 1
            return False, None
        try:
            payload = teacher.prepare(prompt, max_new_tokens=config.output_budget, temperature=temperature, seed=seed)
        except Rejected:
            return True, None  # too long for the server: the run records it as refused without sending it
        key = request_key(teacher.cache_id, prompts.version, payload)
        hit = store.get(key)
        if hit is None:
            # Sent once, however many variants or rows ask for it (the run shares identical requests).
            counts.calls += key not in counts.unsent
            counts.unsent.add(key)
            return False, None
        counts.cached += 1
        if hit.status == ANSWER_REJECTED or hit.text is None:
            return True, None
        fields, _ = parse(hit.text, hit.finish_reason)
        if fields is not None:
            return True, fields
    return True, None


__all__ = [
    "ReflectConfig",
    "ReflectPlan",
    "ReflectResult",
    "ReflectStats",
    "plan_rows",
    "reflect_rows",
    "teacher_identity",
]
