"""HTTP teachers: TGI, vLLM, SGLang, llama.cpp, through ``huggingface_hub.AsyncInferenceClient``.

A teacher is one or more base URLs as that client accepts them: ``http://host:8080`` (TGI) or
``http://host:port/v1`` (any OpenAI-compatible server). Requests go out through a sliding window: a pool of
slot tokens, one per request the servers accept at once, taken before a request and returned the moment it
ends, so the servers stay busy however long each generation takes. The window is sized per server from TGI's
``/info`` (``max_concurrent_requests``) when the server has it, else from ``--concurrency``; URLs share the
load through the same pool.

Each server gets one connection pool of the window's size, owned here: the Hub client's own session would
cap it at 100 connections with 20 kept alive, and would refuse every URL, the user's own server included, when
``HF_HUB_OFFLINE`` is set (as it is on clusters without internet access, where teacher servers often run).

Tokens: a teacher server gets ``$SRECYCLE_TEACHER_TOKEN`` (or the token passed in), and nothing else. The
Hugging Face token (``$HF_TOKEN`` or the stored login) goes only to Hugging Face's own hosts over https (an
Inference Endpoint, a Space, the router): it must never leak to a third-party or plain-http server. The Hub
client would otherwise look up and send that token on its own, so our connection pool sets the Authorization
header of every request itself, replacing whatever the library put there.

Overload answers (429, 5xx), timeouts, dropped connections and garbled bodies are retried with jittered
exponential backoff up to a bound. A request the server refuses for good (422, 400, 413) is not retried:
it raises :class:`Rejected` and the stage records it. Wrong URLs and refused tokens stop the run
(:class:`TeacherError`), as does a request that keeps failing after every retry, leaving every answer
received so far in the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import itertools
import json
import logging
import os
import random
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from recycled_datasets.errors import ConfigError, TeacherError

logger = logging.getLogger(__name__)

TOKEN_ENV = "SRECYCLE_TEACHER_TOKEN"
APIS = ("chat", "generate")
DEFAULT_CONCURRENCY = 16
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_REJECT_STATUS = {400, 413, 422}
# Hosts (and their subdomains) that belong to Hugging Face: only these may receive the user's Hugging Face token.
HF_HOSTS = ("huggingface.co", "hf.co", "hf.space", "huggingface.cloud")
# What the Hub client is given as its token so that it never looks up the user's own (our pool replaces it).
_NO_HUB_TOKEN = "srecycle-auth-set-by-the-connection-pool"


# Defaults sized for a batch job: one answer of a large teacher under load takes minutes at worst, and a
# request that cannot be answered within half an hour of retries points at a server that needs a person.
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_RETRY_SECONDS = 1800.0
# No tokenizer writes more characters than this per token; a longer reply overran its token budget.
MAX_CHARS_PER_TOKEN = 64


class Rejected(Exception):
    """The teacher refused this request for good (e.g. HTTP 422: prompt too long); resending cannot help."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Malformed(Exception):
    """The server answered 200 with a body that is not a usable completion."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One teacher answer with its token usage (``None`` where the server did not say)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass
class CallStats:
    """What the teacher calls cost: requests sent (retries included), retries by reason, refusals, tokens."""

    sent: int = 0
    retries: int = 0
    retry_reasons: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Token limits a server announced (``None`` where it announced nothing)."""

    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_concurrent_requests: int | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between retries: ``base * 2**attempt`` seconds, capped at ``cap``, times a jitter in [0.5, 1].

    ``max_seconds`` bounds the whole life of one request (attempts and waits together): a server that keeps
    failing stops the run after that long instead of holding it for hours.
    """

    max_retries: int = 8
    base: float = 1.0
    cap: float = 60.0
    max_seconds: float = DEFAULT_MAX_RETRY_SECONDS

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        wait = min(self.cap, self.base * 2**attempt) * (0.5 + rng.random() / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap))
        return wait


def is_hf_endpoint(url: str) -> bool:
    """Whether ``url`` is a Hugging Face host reached over https (an Inference Endpoint, a Space, the router)."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    return parts.scheme == "https" and any(host == h or host.endswith("." + h) for h in HF_HOSTS)


def teacher_token(url: str, explicit: str | None = None) -> str | None:
    """The bearer token for the teacher at ``url``: ``explicit``, else ``$SRECYCLE_TEACHER_TOKEN``, else, for a
    Hugging Face host over https only, the Hugging Face token (``$HF_TOKEN`` or the stored login).

    The user's own servers (vLLM, TGI, llama.cpp on a cluster node) never see the Hugging Face token.
    """
    token = explicit or os.environ.get(TOKEN_ENV)
    if token:
        return token
    if is_hf_endpoint(url):
        from huggingface_hub import get_token

        return get_token()
    return None


def _token_hint(url: str) -> str:
    return f"${TOKEN_ENV} or $HF_TOKEN" if is_hf_endpoint(url) else f"${TOKEN_ENV}"


def _connection_pool(token: str | None, **options: Any) -> Any:
    """An ``httpx2.AsyncClient`` whose requests carry ``token`` as bearer token, or no Authorization at all.

    The header is set here, for every request, so that neither the Hub client nor anything else can add the
    user's Hugging Face token to a request for this server. (httpx drops it on a redirect to another host.)
    """
    import httpx2

    def authorize(request: Any) -> Any:
        request.headers.pop("authorization", None)
        if token:
            request.headers["authorization"] = f"Bearer {token}"
        return request

    return httpx2.AsyncClient(auth=authorize, follow_redirects=True, timeout=None, **options)


def split_urls(teacher: str) -> list[str]:
    urls = [u.strip().rstrip("/") for u in teacher.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"teacher URL {url!r} must start with http:// or https://")
    if not urls:
        raise ConfigError("no teacher URL given")
    return urls


def _root(url: str) -> str:
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _inference_client(url: str, http: Any, *, timeout: float) -> Any:
    """An ``AsyncInferenceClient`` for ``url`` that sends its requests through our connection pool ``http``.

    The Hub client looks up the user's Hugging Face token (environment, stored login) whenever it is given
    none, and ``token=False`` is not accepted; so it gets a stand-in it never needs to look beyond, and the
    pool (:func:`_connection_pool`) puts the right header, or none, on every request.
    """
    from huggingface_hub import AsyncInferenceClient

    class _Client(AsyncInferenceClient):
        async def _get_async_client(self) -> Any:
            return http

    return _Client(base_url=url, token=_NO_HUB_TOKEN, timeout=timeout)


@dataclass
class _Endpoint:
    url: str
    token: str | None = None
    http: Any = None
    client: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    window: int = 0


def _status_of(error: BaseException) -> tuple[int | None, Any]:
    """The HTTP status behind a hub error (text-generation errors wrap the HTTP error as their cause)."""
    seen: BaseException | None = error
    while seen is not None:
        response = getattr(seen, "response", None)
        if response is not None and getattr(response, "status_code", None) is not None:
            return int(response.status_code), response
        seen = seen.__cause__
    return None, None


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass  # not seconds: an HTTP date, or junk
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        logger.debug("ignoring a Retry-After header that is neither seconds nor a date: %r", value)
        return None


def _short(text: str, limit: int = 300, secrets: tuple[str | None, ...] = ()) -> str:
    from recycled_datasets.secrets import mask

    text = mask(" ".join(str(text).split()), secrets)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_budget(reply: Reply, payload: dict[str, Any]) -> None:
    """A reply longer than the request's token budget allows is refused, not stored as an answer."""
    budget = payload.get("max_tokens") or payload.get("max_new_tokens")
    if not budget:
        return
    if reply.completion_tokens is not None and reply.completion_tokens > budget:
        raise Rejected(f"the reply has {reply.completion_tokens} tokens, more than the {budget} asked for")
    if len(reply.text) > budget * MAX_CHARS_PER_TOKEN:
        raise Rejected(
            f"the reply has {len(reply.text):,} characters, more than {budget} tokens can hold; "
            "the server ignored the token budget"
        )


class HttpTeacher:
    """One or more inference servers that serve the same teacher model.

    Call :meth:`start` once (waits for health, reads limits and the model name), then :meth:`prepare` and
    :meth:`complete` per request, then :meth:`close`.
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
        self.urls = urls
        self.api = api
        self.concurrency = concurrency
        self.timeout = timeout
        self.health_timeout = health_timeout
        self.retry = retry or RetryPolicy()
        self.tokenizer = tokenizer
        # With the generate api: send each prompt as given (a model's own prompt format), no chat template.
        self.raw_prompts = raw_prompts
        self.teacher_id = teacher_name or ""
        self.teacher_revision = ""
        self.limits = ServerLimits()
        self.window = 0
        self._named = teacher_name is not None
        self._endpoints = [_Endpoint(url, teacher_token(url, token)) for url in urls]
        self._slots: asyncio.Queue[int] | None = None
        self._rng = random.Random(seed)
        self._remembered: dict[str, Any] | None = None
        self._start_lock = asyncio.Lock()

    @property
    def cache_id(self) -> str:
        """What keys this teacher's answers in the store: the model, whichever server or protocol serves it."""
        return self.teacher_id

    # ---- a remembered handshake ----------------------------------------------------------------------------
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
            if self._slots is not None:
                return
            remembered = self._remembered or {}
            logger.info("teacher %s: a request is not in the store; contacting the server", self.urls[0])
            await self.start()
            if remembered and remembered.get("teacher_id") != self.teacher_id:
                raise TeacherError(
                    f"teacher {self.urls[0]} now serves {self.teacher_id}, but this store's answers came from "
                    f"{remembered.get('teacher_id')} at that URL; use another --store or the same model"
                )

    # ---- start-up ----------------------------------------------------------------------------------------

    async def _get(self, http: Any, url: str) -> Any:
        return await http.get(url, timeout=min(self.timeout, 30.0))

    async def _wait_healthy(self, http: Any, endpoint: _Endpoint) -> None:
        import httpx2

        deadline = time.monotonic() + self.health_timeout
        root = _root(endpoint.url)
        last = "no answer yet"
        delay = 0.25
        while True:
            try:
                response = await self._get(http, f"{root}/health")
                if response.status_code == 200:
                    return
                if response.status_code == 404:  # no /health (llama.cpp, some proxies): a model list will do
                    response = await self._get(http, f"{root}/v1/models")
                    if response.status_code == 200:
                        return
                if response.status_code in (401, 403):
                    raise TeacherError(
                        f"teacher {endpoint.url} refused the token (HTTP {response.status_code}); set "
                        f"{_token_hint(endpoint.url)} to a token it accepts"
                    )
                last = f"HTTP {response.status_code}"
            except httpx2.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() + delay > deadline:
                raise TeacherError(
                    f"teacher {endpoint.url} is not ready after {self.health_timeout:.0f} s (last: {last}); "
                    "check that the server is running and the URL is right"
                )
            logger.info("waiting for teacher %s (%s)", endpoint.url, last)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _read_info(self, http: Any, endpoint: _Endpoint) -> None:
        root = _root(endpoint.url)
        response = await self._get(http, f"{root}/info")
        if response.status_code == 200:
            try:
                endpoint.info = dict(response.json())
            except (json.JSONDecodeError, TypeError, ValueError):
                logger.warning("%s/info is not JSON; ignoring it", root)
        response = await self._get(http, f"{root}/v1/models")
        if response.status_code == 200:
            try:
                endpoint.models = list(response.json().get("data") or [])
            except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                logger.warning("%s/v1/models is not a model list; ignoring it", root)

    async def start(self) -> None:
        """Wait for every server's health, read its limits and model name, and open the request window.

        On failure the connection pools opened so far are closed before the error propagates.
        """
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        import httpx2

        for ep in self._endpoints:
            ep.http = _connection_pool(ep.token)
        await asyncio.gather(*(self._wait_healthy(ep.http, ep) for ep in self._endpoints))
        await asyncio.gather(*(self._read_info(ep.http, ep) for ep in self._endpoints))

        names = set()
        for ep in self._endpoints:
            name = ep.info.get("model_id") or (ep.models[0].get("id") if ep.models else None)
            if name:
                names.add(str(name))
        if not self._named:
            if not names:
                raise TeacherError(
                    f"teacher {self.urls[0]} names no model in /info or /v1/models; pass --teacher-name to say "
                    "which model it serves (answers are cached under that name)"
                )
            if len(names) > 1:
                raise TeacherError(f"the teacher URLs serve different models ({', '.join(sorted(names))}); give one")
            self.teacher_id = names.pop()
        self.teacher_revision = str(self._endpoints[0].info.get("model_sha") or "")
        self.limits = self._limits()

        per_server: list[list[int]] = []
        for index, ep in enumerate(self._endpoints):
            announced = ep.info.get("max_concurrent_requests")
            if isinstance(announced, int) and announced > 0:
                ep.window = min(announced, self.concurrency) if self.concurrency else announced
            else:
                ep.window = self.concurrency or DEFAULT_CONCURRENCY
            # A pool as large as the window, every connection kept alive between requests.
            await ep.http.aclose()
            ep.http = None
            limits = httpx2.Limits(max_connections=ep.window + 2, max_keepalive_connections=ep.window + 2)
            ep.http = _connection_pool(ep.token, limits=limits)
            ep.client = _inference_client(ep.url, ep.http, timeout=self.timeout)
            per_server.append([index] * ep.window)
            logger.info(
                "teacher %s: model %s, window %d%s",
                ep.url,
                self.teacher_id,
                ep.window,
                " (from /info)" if isinstance(announced, int) else "",
            )
        # Interleave the servers' slots so that free capacity is handed out round-robin.
        slots = [slot for group in itertools.zip_longest(*per_server) for slot in group if slot is not None]
        self._slots = asyncio.Queue()
        for slot in slots:
            self._slots.put_nowait(slot)
        self.window = len(slots)

    def _limits(self) -> ServerLimits:
        def smallest(*names: str) -> int | None:
            values = []
            for ep in self._endpoints:
                for name in names:
                    value = ep.info.get(name)
                    if value is None and ep.models:
                        value = ep.models[0].get(name)
                    if isinstance(value, int) and value > 0:
                        values.append(value)
                        break
            return min(values) if values else None

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

    # ---- requests ----------------------------------------------------------------------------------------

    def _count(self, text: str) -> tuple[int, bool]:
        """(prompt tokens, exact?) of a user turn: exact with the teacher's tokenizer, else a safe over-estimate."""
        if self.tokenizer is not None:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True
            )
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            return len(ids), True
        return len(text.encode("utf-8")) // 3 + 32, False

    def prepare(self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
        """The request for one user turn, its output budget fitted to the server's limits.

        Raises :class:`Rejected` when the prompt alone is over the server's limit (known for sure only with
        the teacher's tokenizer; otherwise the server is left to judge).
        """
        n_prompt, exact = self._count(prompt)
        budget = max_new_tokens
        limits = self.limits
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
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": budget,
                "temperature": temperature,
                "seed": seed,
            }
        if self.raw_prompts:
            text = prompt
        elif self.tokenizer is None:
            raise ConfigError("--api generate needs the teacher's tokenizer to apply its chat template (--tokenizer)")
        else:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return {
            "api": "generate",
            "inputs": text,
            "max_new_tokens": budget,
            "do_sample": temperature > 0,
            "temperature": temperature if temperature > 0 else None,
            "seed": seed,
            "prompt_tokens": n_prompt,
        }

    async def _send(self, client: Any, payload: dict[str, Any]) -> Reply:
        if payload["api"] == "chat":
            out = await client.chat_completion(
                payload["messages"],
                model=self.teacher_id,
                max_tokens=payload["max_tokens"],
                temperature=payload["temperature"],
                seed=payload["seed"],
            )
            choices = getattr(out, "choices", None)
            if not choices or getattr(choices[0], "message", None) is None or choices[0].message.content is None:
                raise _Malformed("the chat completion has no message content")
            usage = getattr(out, "usage", None)
            return Reply(
                text=choices[0].message.content,
                finish_reason=choices[0].finish_reason,
                prompt_tokens=getattr(usage, "prompt_tokens", None),
                completion_tokens=getattr(usage, "completion_tokens", None),
            )
        out = await client.text_generation(
            payload["inputs"],
            details=True,
            max_new_tokens=payload["max_new_tokens"],
            do_sample=payload["do_sample"],
            temperature=payload["temperature"],
            seed=payload["seed"],
            return_full_text=False,
        )
        text = getattr(out, "generated_text", None)
        if text is None:
            raise _Malformed("the generation has no generated_text")
        details = getattr(out, "details", None)
        return Reply(
            text=text,
            finish_reason=getattr(details, "finish_reason", None),
            prompt_tokens=payload.get("prompt_tokens"),
            completion_tokens=getattr(details, "generated_tokens", None),
        )

    async def complete(self, payload: dict[str, Any], stats: CallStats) -> Reply:
        """Send one request through the window, retrying what a retry can fix; see the module doc."""
        import httpx2
        from huggingface_hub import InferenceTimeoutError
        from huggingface_hub.errors import HfHubHTTPError, OverloadedError, TextGenerationError, ValidationError

        if self._slots is None and self._remembered is not None:
            await self._start_deferred()
        if self._slots is None:
            raise RuntimeError("HttpTeacher.start() was not awaited")
        attempt = 0
        first = time.monotonic()
        while True:
            slot = await self._slots.get()
            endpoint = self._endpoints[slot]
            retry_after: float | None = None
            try:
                stats.sent += 1
                reply = await self._send(endpoint.client, payload)
                stats.prompt_tokens += reply.prompt_tokens or 0
                stats.completion_tokens += reply.completion_tokens or 0
                _check_budget(reply, payload)
                return reply
            except InferenceTimeoutError:
                kind, reason = "timeout", f"no answer within {self.timeout:g} s"
            except httpx2.TransportError as e:
                kind, reason = "connection", f"{type(e).__name__}: {e}"
            except (_Malformed, json.JSONDecodeError) as e:
                kind, reason = "malformed", f"unusable answer body ({e})"
            except (HfHubHTTPError, TextGenerationError) as e:
                status, response = _status_of(e)
                if status is None:  # a TGI error without its HTTP answer: its type says which it was
                    status = 429 if isinstance(e, OverloadedError) else 422 if isinstance(e, ValidationError) else 500
                message = _short(getattr(response, "text", "") or str(e), secrets=(endpoint.token,))
                if status in _REJECT_STATUS:
                    stats.rejected += 1
                    raise Rejected(f"HTTP {status}: {message}") from e
                if status in (401, 403):
                    raise TeacherError(
                        f"teacher {endpoint.url} refused the token (HTTP {status}); set {_token_hint(endpoint.url)}"
                    ) from e
                if status == 404:
                    raise TeacherError(
                        f"teacher {endpoint.url} has no such route or model (HTTP 404: {message}); check the URL "
                        "(TGI: http://host:port, OpenAI-compatible: http://host:port/v1) and --api"
                    ) from e
                if status not in _RETRY_STATUS and status < 500:
                    raise TeacherError(f"teacher {endpoint.url} answered HTTP {status}: {message}") from e
                kind, reason = f"http_{status}", f"HTTP {status}: {message}"
                retry_after = _retry_after(response)
            finally:
                self._slots.put_nowait(slot)
            reason = _short(reason, secrets=(endpoint.token,))
            wait = self.retry.delay(attempt, retry_after, self._rng)
            spent = time.monotonic() - first
            if attempt >= self.retry.max_retries or spent + wait > self.retry.max_seconds:
                raise TeacherError(
                    f"a teacher request still failed after {attempt + 1} attempts in {spent:.0f} s (last: {reason}); "
                    "every answer received so far is stored, so a rerun continues from there"
                )
            stats.retries += 1
            stats.retry_reasons[kind] += 1
            logger.warning(
                "teacher %s: %s; attempt %d of %d, retrying in %.1f s",
                endpoint.url,
                reason,
                attempt + 1,
                self.retry.max_retries + 1,
                wait,
            )
            attempt += 1
            await asyncio.sleep(wait)
