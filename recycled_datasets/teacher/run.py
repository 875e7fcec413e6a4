"""One run of asking a teacher: each request looked up in the store, shared with its twins, or sent.

:class:`TeacherRun` is what the reflect stage, the judge and ``generate`` have in common: every answer is
looked up in the store before it is asked for and committed there as it arrives, so a run can be killed at
any point and rerun, and identical requests in flight are asked once. For the reflect stage it also reads a
reply (asking once more when it is unusable) and makes the three calls of a source row. With a store-only
teacher (``base.StoreOnlyTeacher``) the same code re-judges stored answers or, planning, counts what a real
run would still have to send.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from recycled_datasets.errors import RecycledError, Rejected
from recycled_datasets.records import STATUS_FAILED, STATUS_FELL_BACK, SourceRow
from recycled_datasets.teacher.base import CallStats, NotStored, Teacher
from recycled_datasets.teacher.config import Sampling
from recycled_datasets.teacher.gates import NOT_ASKED, GateConfig, reason_counts
from recycled_datasets.teacher.prompts import PromptSet, Request
from recycled_datasets.teacher.replies import Judge, parse_instruction_reply, parse_response_reply
from recycled_datasets.teacher.store import ANSWER_OK, ANSWER_REJECTED, AnswerStore, request_key
from recycled_datasets.teacher.variants import Outcome, variant_record


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


def first_user_error(group: BaseExceptionGroup) -> BaseException:
    """The error to show from a task group's failures: the first the user can act on, else the first."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return first_user_error(error)
        if isinstance(error, RecycledError):
            return error
    return group.exceptions[0]


def _count(counts: dict[str, int], why: str | None) -> None:
    for reason in reason_counts([why]):
        counts[reason] = counts.get(reason, 0) + 1


def _consume(future: asyncio.Future[Any]) -> None:
    # The first caller re-raises the error itself; twins waiting on the future get it too. Reading it here
    # keeps asyncio from reporting it a second time as "never retrieved" when no twin was waiting.
    if not future.cancelled():
        future.exception()


@dataclass
class Unsent:
    """What a store-only run met that is not stored: request keys with their prompt lengths, and the ``both``
    requests whose prompt waits on an ``ins`` answer not asked yet (prompt length of the original pair's)."""

    keys: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    waiting_chars: int = 0


class TeacherRun:
    """The state of one run: teacher, store, prompts, counters, and requests in flight.

    ``planning`` (a dry run) stops a row where a real run would need an answer that is not stored yet, and
    ``resend_rejected`` there treats stored refusals as not stored (the real run forgets them first).
    """

    def __init__(
        self,
        teacher: Teacher,
        store: AnswerStore,
        prompts: PromptSet,
        meter: ProgressMeter,
        *,
        sampling: Sampling,
        gates: GateConfig | None = None,
        planning: bool = False,
        resend_rejected: bool = False,
    ):
        self.teacher = teacher
        self.store = store
        self.prompts = prompts
        self.meter = meter
        self.sampling = sampling
        self.gates = gates or GateConfig()
        self.planning = planning
        self.resend_rejected = resend_rejected
        self.calls = CallStats()
        self.stats = ReflectStats()
        self.stored: set[str] = set()  # planning: the keys answered from the store
        self.unsent = Unsent()
        self.scaffold = prompts.scaffold()
        self._inflight: dict[str, asyncio.Future[tuple[str, str | None]]] = {}
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="answer-store")

    def close(self) -> None:
        self._io.shutdown(wait=True)

    @contextlib.asynccontextmanager
    async def begun(self, memory: AnswerStore | None = None) -> AsyncIterator[None]:
        """The teacher's one handshake (``memory``: a store that may remember it), and at the end, however the
        body ends, the teacher closed and the last answer committed."""
        try:
            # Inside the try: a server that never gets healthy or refuses the token must not leave the
            # connection pools that the handshake opened behind.
            started = time.monotonic()
            await self.teacher.begin(memory)
            self.stats.setup_seconds = round(time.monotonic() - started, 3)
            yield
        finally:
            await self.teacher.close()
            self.close()  # waits for the last commit before the store closes

    async def each(self, jobs: Iterable[Callable[[], Awaitable[None]]]) -> None:
        """Await every job, about twice the teacher's window of them under way at once (a row of the reflect
        stage has one or two calls waiting at a time); the first error the user can act on ends them all."""
        in_flight = asyncio.Semaphore(max(4, 2 * self.teacher.window))

        async def one(job: Callable[[], Awaitable[None]]) -> None:
            try:
                await job()
            finally:
                in_flight.release()

        try:
            async with asyncio.TaskGroup() as group:
                for job in jobs:
                    await in_flight.acquire()
                    group.create_task(one(job))
        except BaseExceptionGroup as group_error:
            raise first_user_error(group_error) from group_error

    def count_into(self, stats: Any) -> None:
        """Copy the call counters (sent with retries, retries by reason, answers from the store) into ``stats``."""
        stats.sent = self.calls.sent
        stats.retries = self.calls.retries
        stats.retry_reasons = dict(self.calls.retry_reasons)
        stats.cached = self.stats.cached

    async def _store(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # SQLite work runs in the store's own thread: an fsync per answer must not stall the event loop that
        # keeps the other requests of the window moving. It is submitted at once and shielded: a run stopped by
        # another request's error (a model switch, a refused token) still commits every answer it received.
        return await asyncio.shield(asyncio.wrap_future(self._io.submit(call, *args, **kwargs)))

    async def ask(self, prompt: str, attempt: int, system: str = "") -> tuple[str, str | None]:
        """(reply text, finish reason) of one request (the user turn ``prompt`` after the system message
        ``system``): from the store, from a twin in flight, or from the teacher.

        The request is registered as in flight before the store is read and stays so until its answer is
        committed, so an identical request (the ``both`` of a row whose ``ins`` fell back, a duplicate row)
        always finds either the one in flight or the stored answer, and is never paid for twice.
        """
        temperature, seed = self.sampling.of(attempt)
        try:
            payload = self.teacher.prepare(
                prompt, max_new_tokens=self.sampling.max_new_tokens, temperature=temperature, seed=seed, system=system
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
            answer = await self._answer(key, payload, len(system) + len(prompt))
            future.set_result(answer)
            return answer
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(e)
            raise
        finally:
            del self._inflight[key]
            self.meter.done(self.calls)

    async def _answer(self, key: str, payload: dict[str, Any], prompt_chars: int) -> tuple[str, str | None]:
        stored = await self._store(self.store.get, key)
        if stored is not None and not (self.resend_rejected and stored.status == ANSWER_REJECTED):
            self.stats.cached += 1
            if self.planning:
                self.stored.add(key)
            if stored.status == ANSWER_REJECTED:
                raise Rejected(stored.error or "refused by the teacher")
            return stored.text or "", stored.finish_reason
        record = {"teacher": self.teacher.cache_id, "prompt_version": self.prompts.version, "request": payload}
        try:
            reply = await self.teacher.complete(payload, self.calls)
        except NotStored:
            self.unsent.keys[key] = prompt_chars
            raise
        except Rejected as e:
            await self._store(self.store.put, key, **record, status=ANSWER_REJECTED, error=e.reason)
            raise
        await self._store(self.store.put, key, **record, status=ANSWER_OK, **asdict(reply))
        return reply.text, reply.finish_reason

    async def reflect(
        self, request: Request, parse: Callable[[str, Judge], tuple[dict[str, str] | None, str | None]]
    ) -> Outcome:
        """Ask, parse and judge, ask once more if unusable, else report the fallback with both reasons."""
        reasons = []
        for attempt in range(2):
            try:
                text, finish = await self.ask(request.user, attempt, request.system)
            except Rejected as e:
                prior = f" (after {reasons[0]})" if reasons else ""
                return Outcome(rejected=f"{e.reason}{prior}")
            except NotStored:
                why = f"[{NOT_ASKED}] not in the answer store, and this run re-judges stored answers only"
                reasons.append(f"attempt {attempt + 1}: {why}")
                _count(self.stats.rejections, why)
                return Outcome(fallback="; ".join(reasons), unasked=True)
            fields, why = parse(text, Judge(self.gates, self.scaffold, finish))
            if fields is not None:
                return Outcome(fields=fields)
            _count(self.stats.rejections, why)
            cut = " (the reply ran out of tokens)" if finish == "length" and "[cut_off]" not in (why or "") else ""
            reasons.append(f"attempt {attempt + 1}: {why}{cut}")
            if attempt == 0:
                self.stats.parse_retries += 1
                self.meter.one_more()
        return Outcome(fallback="; ".join(reasons))

    async def row(self, row: SourceRow) -> dict[str, Any]:
        """The three calls of one source row (``ins`` then ``both``, beside ``res``) and its reflections row."""
        prompts = self.prompts

        async def response_reflection(instruction: str, input: str, output: str) -> Outcome:
            return await self.reflect(
                prompts.response_request(instruction, input, output, row.context),
                lambda text, judge: parse_response_reply(
                    prompts, text, instruction=instruction, original=output, judge=judge
                ),
            )

        async def ins_then_both() -> tuple[Outcome, Outcome]:
            ins = await self.reflect(
                prompts.instruction_request(row.instruction, row.input, row.output, row.context),
                lambda text, judge: parse_instruction_reply(prompts, text, original=row.instruction, judge=judge),
            )
            if ins.fields is not None:
                both = await response_reflection(ins.fields["instruction"], "", ins.fields["output"])
            elif ins.unasked and self.planning:
                # A real run asks for ins first, and both reflects its answer: one more call, prompt unknown.
                self.unsent.waiting += 1
                request = prompts.response_request(row.instruction, row.input, row.output, row.context)
                self.unsent.waiting_chars += len(request.system) + len(request.user)
                both = ins
            else:
                both = await response_reflection(row.instruction, row.input, row.output)
            return ins, both

        async with asyncio.TaskGroup() as group:
            first = group.create_task(ins_then_both())
            res_task = group.create_task(response_reflection(row.instruction, row.input, row.output))
        ins, both = first.result()
        record = variant_record(row, ins, res_task.result(), both)
        statuses = [record[f"{variant}_status"] for variant in ("ins", "res", "both")]
        self.stats.fallbacks += statuses.count(STATUS_FELL_BACK)
        self.stats.failures += statuses.count(STATUS_FAILED)
        return record
