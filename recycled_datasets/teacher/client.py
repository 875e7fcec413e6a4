"""The server teacher: TGI, vLLM, SGLang, llama.cpp, through ``huggingface_hub.AsyncInferenceClient``.

A teacher is one or more base URLs as that client accepts them: ``http://host:8080`` (TGI) or
``http://host:port/v1`` (any OpenAI-compatible server). Requests go out through a sliding window: a pool of
slot tokens, one per request the servers accept at once, taken before a request and returned the moment it
ends, so the servers stay busy however long each generation takes. The window is sized per server from TGI's
``/info`` (``max_concurrent_requests``) when the server has it, else from ``--concurrency``; URLs share the
load through the same pool, and one that keeps failing is set aside for a cool-down while the others go on
(``replicas``). At the start one ready replica is enough: the others begin set aside, and a replica coming
back from being set aside must report this teacher's model before its probe is sent. Tokens, connection pools
and the reading of failures are in ``transport``.

Overload answers (429, 5xx), timeouts, dropped connections and garbled bodies are retried with jittered
exponential backoff up to a bound. A request the server refuses for good (422, 400, 413) is not retried:
it raises :class:`~recycled_datasets.errors.Rejected` and the stage records it. Wrong URLs and refused tokens
stop the run (:class:`~recycled_datasets.errors.TeacherError`), as does a request that keeps failing after
every retry, leaving every answer received so far in the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from recycled_datasets.errors import ConfigError, Rejected, TeacherError
from recycled_datasets.teacher.base import CallStats, Reply, ServerLimits, Teacher, apply_chat_template, chat_messages
from recycled_datasets.teacher.replicas import Cooldown, Replicas
from recycled_datasets.teacher.transport import (
    APIS,
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    NotReady,
    RetryPolicy,
    ServedModel,
    _check_budget,
    _connection_pool,
    _inference_client,
    _short,
    classify,
    read_info,
    send_within,
    split_credentials,
    teacher_token,
    wait_healthy,
)

if TYPE_CHECKING:
    from recycled_datasets.teacher.store import AnswerStore

logger = logging.getLogger(__name__)

# Once one replica is ready, how much longer the others have to get ready before they start set aside.
READY_GRACE = 2.0

__all__ = ["HttpTeacher"]


@dataclasses.dataclass
class _Endpoint:
    url: str  # without credentials: what is logged, shown and stored
    token: str | None = None
    basic: str | None = None  # ``user:password`` given in the URL, sent as basic authentication
    http: Any = None
    client: Any = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    models: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    window: int = 0


def _reported_name(info: dict[str, Any], models: list[dict[str, Any]]) -> str | None:
    name = info.get("model_id") or (models[0].get("id") if models else None)
    return name if name and isinstance(name, str) else None


class HttpTeacher(Teacher):
    """One or more inference servers that serve the same teacher model.

    Its handshake (:meth:`begin`, through :meth:`start`) waits for health and reads the limits and the model
    name, or takes them from the store's memory of an earlier handshake with the same servers.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        api: str = "chat",
        concurrency: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        health_timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        cooldown: Cooldown | None = None,
        teacher_name: str | None = None,
        tokenizer: Any = None,
        token: str | None = None,
        seed: int = 0,
        raw_prompts: bool = False,
    ):
        if api not in APIS:
            raise ConfigError(f"unknown teacher api {api!r}: choose {' or '.join(APIS)}")
        if api == "generate" and any(u.endswith("/v1") for u in urls):
            raise ConfigError("--api generate talks to TGI's native route: give the server root, without /v1")
        plain = [split_credentials(url) for url in urls]
        self.urls = [url for url, _ in plain]
        self.api = api
        self.concurrency = concurrency
        self.timeout = timeout
        self.health_timeout = health_timeout
        self.retry = retry or RetryPolicy()
        self.cooldown = cooldown or Cooldown()
        self.tokenizer = tokenizer
        # With the generate api: send each prompt as given (a model's own prompt format), no chat template.
        self.raw_prompts = raw_prompts
        self.teacher_id = teacher_name or ""
        self.teacher_revision = ""
        self.limits = ServerLimits()
        self.window = 0
        self._named = teacher_name is not None
        self._endpoints = [_Endpoint(url, teacher_token(url, token), basic) for url, basic in plain]
        self._served: ServedModel | None = None  # the names replies may give the model (see transport.send)
        self._replicas: Replicas | None = None  # the request window, once started
        self._rng = random.Random(seed)
        self._remembered: dict[str, Any] | None = None
        self._start_lock = asyncio.Lock()

    @property
    def cache_id(self) -> str:
        """What keys this teacher's answers in the store: the model, whichever server or protocol serves it."""
        return self.teacher_id

    @property
    def signature(self) -> str:
        """Which servers these are, as the answer store remembers their handshake."""
        name = self.teacher_id if self._named else None
        return json.dumps({"urls": sorted(self.urls), "api": self.api, "name": name})

    def handshake(self) -> dict[str, Any]:
        """What :meth:`start` learned and the request keys depend on: the model and the servers' limits."""
        return {
            "teacher_id": self.teacher_id,
            "teacher_revision": self.teacher_revision,
            "limits": dataclasses.asdict(self.limits),
            "window": self.window,
        }

    def restore(self, handshake: dict[str, Any]) -> None:
        """Take a remembered handshake instead of contacting the servers; the first request that must really be
        sent starts them then (and stops if they now serve another model)."""
        self.teacher_id = str(handshake["teacher_id"])
        self.teacher_revision = str(handshake.get("teacher_revision") or "")
        # A handshake remembered by another version may name fields this one lacks: keep the ones it knows.
        known = {f.name for f in dataclasses.fields(ServerLimits)}
        self.limits = ServerLimits(**{k: v for k, v in handshake.get("limits", {}).items() if k in known})
        self.window = int(handshake.get("window") or self.concurrency or DEFAULT_CONCURRENCY)
        self._remembered = dict(handshake)

    async def _start_deferred(self) -> None:
        async with self._start_lock:
            if self._replicas is not None:
                return
            remembered = self._remembered or {}
            logger.info("teacher %s: a request is not in the store; contacting the server", self.urls[0])
            await self.start()
            if remembered and remembered.get("teacher_id") != self.teacher_id:
                raise TeacherError(
                    f"teacher {self.urls[0]} now serves {self.teacher_id}, but this store's answers came from "
                    f"{remembered.get('teacher_id')} at that URL; use another --store or the same model"
                )

    async def begin(self, store: AnswerStore | None = None, *, generate: bool = True) -> None:
        """Start the servers, unless ``store`` remembers their handshake: then they are contacted only when a
        request must really be sent, so a run whose answers are all stored works with the servers down."""
        remembered = store.recall_teacher(self.signature) if store is not None else None
        if remembered is not None:
            self.restore(remembered)
        else:
            await self.start()
            if store is not None:
                store.remember_teacher(self.signature, self.handshake())
        if self.api == "generate" and self.tokenizer is None and not self.raw_prompts:
            from recycled_datasets.teacher.config import load_teacher_tokenizer

            self.tokenizer = await asyncio.to_thread(load_teacher_tokenizer, self.teacher_id)

    async def start(self) -> None:
        """Wait for the servers' health (one is enough, see :meth:`_wait_ready`), read their limits and model
        name, and open the request window.

        On failure the connection pools opened so far are closed before the error propagates.
        """
        import httpx2

        try:
            for ep in self._endpoints:
                ep.http = _connection_pool(ep.token, ep.basic)
            aside = await self._wait_ready()
            self._name_model()
            # A reply may name the model as asked or as the server reported it; any other name is a switch.
            self._served = ServedModel([*sorted(self._reported_names() - {self.teacher_id}), self.teacher_id])
            first = next(ep for i, ep in enumerate(self._endpoints) if i not in aside)
            self.teacher_revision = str(first.info.get("model_sha") or "")
            self.limits = self._limits()

            for ep in self._endpoints:
                announced = ep.info.get("max_concurrent_requests")
                if isinstance(announced, int) and announced > 0:
                    ep.window = min(announced, self.concurrency or announced)
                else:
                    ep.window = self.concurrency or DEFAULT_CONCURRENCY
                http, ep.http = ep.http, None
                await http.aclose()
                limits = httpx2.Limits(max_connections=ep.window + 2, max_keepalive_connections=ep.window + 2)
                ep.http = _connection_pool(ep.token, ep.basic, limits=limits)
                ep.client = _inference_client(ep.url, ep.http, timeout=self.timeout)
                source = " (from /info)" if isinstance(announced, int) else ""
                logger.info("teacher %s: model %s, window %d%s", ep.url, self.teacher_id, ep.window, source)
            self._replicas = Replicas(self.urls, [ep.window for ep in self._endpoints], self.cooldown)
            for index, reason in aside.items():
                self._replicas.set_aside(index, reason)
            self.window = self._replicas.window
        except BaseException:
            await self.close()
            raise

    async def _wait_ready(self) -> dict[int, str]:
        """Wait for health, read ``/info`` and ``/v1/models``; return the replicas not ready, each with why.
        Once one is ready the others get ``READY_GRACE`` s more; a wrong token or redirect loop fails at once."""
        single = len(self._endpoints) == 1
        seen: dict[str, str] = {}  # the latest failure of each replica not ready yet

        async def ready(ep: _Endpoint) -> None:
            await wait_healthy(
                ep.http, ep.url, health_timeout=self.health_timeout, timeout=self.timeout, warn=single, seen=seen
            )
            ep.info, ep.models = await read_info(ep.http, ep.url, timeout=self.timeout)

        tasks = {asyncio.ensure_future(ready(ep)): index for index, ep in enumerate(self._endpoints)}
        pending, grace_end = set(tasks), 0.0  # grace_end: set once one replica is ready
        loop = asyncio.get_running_loop()
        # Until one is ready: the whole wait (said once, after a moment); then the others' grace.
        timeout: float | None = None if single else READY_GRACE
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        grace_end = grace_end or loop.time() + READY_GRACE
                    elif single or not isinstance(error, NotReady):
                        raise error
                if grace_end:
                    timeout = max(0.0, grace_end - loop.time())
                    if not done:
                        break
                elif not done:
                    timeout = None
                    logger.warning(
                        "no teacher replica answers yet (%s); waiting up to %.0f s for the first "
                        "(reflect --wait-ready SECONDS)",
                        "; ".join(f"{url}: {why}" for url, why in seen.items()),
                        self.health_timeout,
                    )
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        aside = {
            index: seen.get(self.urls[index], "no answer yet")
            for task, index in tasks.items()
            if task.cancelled() or task.exception() is not None
        }
        if not grace_end:
            raise TeacherError(
                f"no teacher replica is ready after {self.health_timeout:.0f} s: "
                + "; ".join(f"{self.urls[index]} (last: {why})" for index, why in aside.items())
                + "; check that the servers are running and the URLs are right"
            )
        return aside

    def _reported_names(self) -> set[str]:
        return {name for ep in self._endpoints if (name := _reported_name(ep.info, ep.models))}

    async def _check_model(self, ep: _Endpoint) -> None:
        """Before probing a replica set aside: the model it reports now must be this teacher's."""
        name = _reported_name(*await read_info(ep.http, ep.url, timeout=self.timeout))
        if name is not None and self._served is not None and name not in self._served.names:
            raise TeacherError(
                f"teacher {ep.url} is back but serves {name}, not {self.teacher_id} as the other replicas; "
                f"nothing was sent to it; every answer of {self.teacher_id} so far is stored, so a rerun continues "
                f"from there (serve {self.teacher_id} at that URL, or leave it out of --teacher)"
            )

    def _name_model(self) -> None:
        """The model name the servers report, unless the user named it; they must all serve the same one."""
        if self._named:
            return
        names = self._reported_names()
        if not names:
            raise TeacherError(
                f"teacher {self.urls[0]} names no model in /info or /v1/models; pass --teacher-name to say "
                "which model it serves (answers are cached under that name)"
            )
        if len(names) > 1:
            raise TeacherError(f"the teacher URLs serve different models ({', '.join(sorted(names))}); give one")
        self.teacher_id = names.pop()

    def _limits(self) -> ServerLimits:
        def smallest(*names: str) -> int | None:
            found: list[int] = []
            for ep in self._endpoints:
                model = ep.models[0] if ep.models else {}
                values = (model.get(name) if ep.info.get(name) is None else ep.info.get(name) for name in names)
                found += [value for value in values if isinstance(value, int) and value > 0][:1]
            return min(found, default=None)

        return ServerLimits(
            max_input_tokens=smallest("max_input_tokens", "max_input_length"),
            max_total_tokens=smallest("max_total_tokens", "max_model_len"),
            max_concurrent_requests=smallest("max_concurrent_requests"),
        )

    async def close(self) -> None:
        """Close every connection pool; safe to call more than once, and after a failed :meth:`start`."""
        for ep in self._endpoints:
            if ep.http is not None:
                http, ep.http = ep.http, None
                await http.aclose()

    def _count(self, text: str, system: str = "") -> tuple[int, bool]:
        """(prompt tokens, exact?) of a request: exact with the teacher's tokenizer, else a safe over-estimate."""
        if self.tokenizer is not None:
            ids = apply_chat_template(self.tokenizer, text, system, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            return len(ids), True
        extra = len(system.encode("utf-8")) // 3 + 16 if system else 0
        return len(text.encode("utf-8")) // 3 + 32 + extra, False

    def prepare(
        self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int, system: str = ""
    ) -> dict[str, Any]:
        """The request for one user turn (after the system message ``system``), its output budget fitted to the
        server's limits: at most ``max_new_tokens``, and no more than the server's context leaves after the
        prompt when the server announces its context.

        Raises :class:`Rejected` when the prompt alone is over the server's limit (known for sure only with
        the teacher's tokenizer; otherwise the server is left to judge).
        """
        n_prompt, exact = self._count(prompt, system)
        budget, limits = max_new_tokens, self.limits
        if exact and limits.max_input_tokens is not None and n_prompt > limits.max_input_tokens:
            raise Rejected(f"the prompt is {n_prompt} tokens; the server accepts at most {limits.max_input_tokens}")
        if limits.max_total_tokens is not None:
            room = limits.max_total_tokens - n_prompt
            if room < 1 and exact:
                raise Rejected(
                    f"the prompt is {n_prompt} tokens and leaves no room for an answer in the server's "
                    f"{limits.max_total_tokens}-token context"
                )
            if room >= 1:
                budget = min(budget, room)
        if self.api == "chat":
            return {
                "api": "chat",
                "messages": chat_messages(prompt, system),
                "max_tokens": budget,
                "temperature": temperature,
                "seed": seed,
            }
        if self.raw_prompts:
            # A model's own prompt format, no chat template: the system message is its first paragraph.
            text = f"{system}\n\n{prompt}" if system else prompt
        elif self.tokenizer is None:
            raise ConfigError("--api generate needs the teacher's tokenizer to apply its chat template (--tokenizer)")
        else:
            text = apply_chat_template(self.tokenizer, prompt, system, tokenize=False)
        return {
            "api": "generate",
            "inputs": text,
            "max_new_tokens": budget,
            "do_sample": temperature > 0,
            "temperature": temperature if temperature > 0 else None,
            "seed": seed,
            "prompt_tokens": n_prompt,
        }

    async def complete(self, payload: dict[str, Any], stats: CallStats) -> Reply:
        """Send one request through the window, retrying what a retry can fix; see the module doc."""
        if self._replicas is None and self._remembered is not None:
            await self._start_deferred()
        if self._replicas is None:
            raise RuntimeError("HttpTeacher.begin() was not awaited")
        replicas, attempt, first = self._replicas, 0, time.monotonic()
        while True:
            slot, probe = await replicas.take(first + self.retry.max_seconds)
            endpoint = self._endpoints[slot]
            try:
                if probe:
                    await self._check_model(endpoint)
                stats.sent += 1
                reply = await send_within(
                    endpoint.client, payload, model=self.teacher_id, served=self._served, timeout=self.timeout
                )
                replicas.answered(slot, probe)
                stats.prompt_tokens += reply.prompt_tokens or 0
                stats.completion_tokens += reply.completion_tokens or 0
                _check_budget(reply, payload)
                return reply
            except Rejected:
                raise  # the reply overran its budget: refused here, not by the server
            except Exception as e:
                try:
                    failure = classify(e, url=endpoint.url, token=endpoint.token, timeout=self.timeout)
                except Rejected:
                    replicas.answered(slot, probe)  # a refusal for good is an answer: the server is up
                    stats.rejected += 1
                    raise
                reason = _short(failure.reason, secrets=(endpoint.token,))
                replicas.failed(slot, reason, probe)
            finally:
                replicas.release(slot, probe)
            wait = self.retry.delay(attempt, failure.retry_after, self._rng)
            spent = time.monotonic() - first
            if attempt >= self.retry.max_retries or spent + wait > self.retry.max_seconds:
                aside = replicas.aside()
                raise TeacherError(
                    f"a teacher request still failed after {attempt + 1} attempts in {spent:.0f} s (last: {reason})"
                    f"{'; ' + aside if aside else ''}; every answer received so far is stored, so a rerun "
                    "continues from there"
                )
            stats.retries += 1
            stats.retry_reasons[failure.kind] += 1
            attempt, tries = attempt + 1, self.retry.max_retries + 1
            logger.warning(
                "teacher %s: %s; attempt %d of %d, retrying in %.1f s", endpoint.url, reason, attempt, tries, wait
            )
            await asyncio.sleep(wait)
