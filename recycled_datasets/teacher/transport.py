"""The HTTP side of the server teacher: tokens, connection pools, sending one request, reading its failure.

Tokens: a teacher server gets ``$SRECYCLE_TEACHER_TOKEN`` (or the token passed in), and nothing else. The
Hugging Face token (``$HF_TOKEN`` or the stored login) goes only to Hugging Face's own hosts over https (an
Inference Endpoint, a Space, the router): it must never leak to a third-party or plain-http server. The Hub
client would otherwise look up and send that token on its own, so our connection pool sets the Authorization
header of every request itself, replacing whatever the library put there.

Each server gets one connection pool of the window's size, owned here: the Hub client's own session would
cap it at 100 connections with 20 kept alive, and would refuse every URL, the user's own server included, when
``HF_HUB_OFFLINE`` is set (as it is on clusters without internet access, where teacher servers often run).

A failed request is sorted by :func:`classify`: overload answers (429, 5xx), timeouts, dropped connections and
garbled bodies are worth a retry; a request the server refuses for good (422, 400, 413) raises
:class:`~recycled_datasets.errors.Rejected`; wrong routes and refused tokens raise
:class:`~recycled_datasets.errors.TeacherError`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from recycled_datasets.errors import ConfigError, Rejected, TeacherError
from recycled_datasets.teacher.base import Reply

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


class _Malformed(Exception):
    """The server answered 200 with a body that is not a usable completion."""


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


async def _get(http: Any, url: str, timeout: float) -> Any:
    return await http.get(url, timeout=min(timeout, 30.0))


async def wait_healthy(http: Any, url: str, *, health_timeout: float, timeout: float) -> None:
    """Wait until the server at ``url`` answers ``/health`` (or, without one, ``/v1/models``) with 200."""
    import httpx2

    deadline = time.monotonic() + health_timeout
    root = _root(url)
    last = "no answer yet"
    delay = 0.25
    while True:
        try:
            response = await _get(http, f"{root}/health", timeout)
            if response.status_code == 200:
                return
            if response.status_code == 404:  # no /health (llama.cpp, some proxies): a model list will do
                response = await _get(http, f"{root}/v1/models", timeout)
                if response.status_code == 200:
                    return
            if response.status_code in (401, 403):
                raise TeacherError(
                    f"teacher {url} refused the token (HTTP {response.status_code}); set "
                    f"{_token_hint(url)} to a token it accepts"
                )
            last = f"HTTP {response.status_code}"
        except httpx2.TransportError as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() + delay > deadline:
            raise TeacherError(
                f"teacher {url} is not ready after {health_timeout:.0f} s (last: {last}); "
                "check that the server is running and the URL is right"
            )
        logger.info("waiting for teacher %s (%s)", url, last)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def read_info(http: Any, url: str, *, timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the server tells about itself: TGI's ``/info`` and the ``/v1/models`` list (each empty if absent)."""
    root = _root(url)
    info: dict[str, Any] = {}
    models: list[dict[str, Any]] = []
    response = await _get(http, f"{root}/info", timeout)
    if response.status_code == 200:
        try:
            info = dict(response.json())
        except (json.JSONDecodeError, TypeError, ValueError):
            logger.warning("%s/info is not JSON; ignoring it", root)
    response = await _get(http, f"{root}/v1/models", timeout)
    if response.status_code == 200:
        try:
            models = list(response.json().get("data") or [])
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            logger.warning("%s/v1/models is not a model list; ignoring it", root)
    return info, models


async def send(client: Any, payload: dict[str, Any], *, model: str) -> Reply:
    """One attempt at a prepared request through the Hub client: the chat route or TGI's generate route."""
    if payload["api"] == "chat":
        settings = {name: payload[name] for name in ("max_tokens", "temperature", "seed")}
        out = await client.chat_completion(payload["messages"], model=model, **settings)
        choices = getattr(out, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None or choices[0].message.content is None:
            raise _Malformed("the chat completion has no message content")
        usage = getattr(out, "usage", None)
        text, finish = choices[0].message.content, choices[0].finish_reason
        return Reply(text, finish, getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
    settings = {name: payload[name] for name in ("max_new_tokens", "do_sample", "temperature", "seed")}
    out = await client.text_generation(payload["inputs"], details=True, return_full_text=False, **settings)
    if getattr(out, "generated_text", None) is None:
        raise _Malformed("the generation has no generated_text")
    details = getattr(out, "details", None)
    # The details name no prompt length: the count prepare() made stands in for it.
    finish, generated = getattr(details, "finish_reason", None), getattr(details, "generated_tokens", None)
    return Reply(out.generated_text, finish, payload.get("prompt_tokens"), generated)


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt worth retrying: its kind (counted per run), why, and the wait the server asked for."""

    kind: str
    reason: str
    retry_after: float | None = None


def classify(error: Exception, *, url: str, token: str | None, timeout: float) -> Failure:
    """What one failed attempt at ``url`` means: a :class:`Failure` to retry, or the error that ends it.

    Raises :class:`Rejected` for a refusal for good and :class:`TeacherError` for a wrong route, a refused
    token or another client error; anything that is no failure of the request is raised again as it is.
    """
    import httpx2
    from huggingface_hub import InferenceTimeoutError
    from huggingface_hub.errors import HfHubHTTPError, OverloadedError, TextGenerationError, ValidationError

    if isinstance(error, InferenceTimeoutError):
        return Failure("timeout", f"no answer within {timeout:g} s")
    if isinstance(error, httpx2.TransportError):
        return Failure("connection", f"{type(error).__name__}: {error}")
    if isinstance(error, (_Malformed, json.JSONDecodeError)):
        return Failure("malformed", f"unusable answer body ({error})")
    if not isinstance(error, (HfHubHTTPError, TextGenerationError)):
        raise error
    status, response = _status_of(error)
    if status is None:  # a TGI error without its HTTP answer: its type says which it was
        status = 429 if isinstance(error, OverloadedError) else 422 if isinstance(error, ValidationError) else 500
    message = _short(getattr(response, "text", "") or str(error), secrets=(token,))
    if status in _REJECT_STATUS:
        raise Rejected(f"HTTP {status}: {message}") from error
    if status in (401, 403):
        raise TeacherError(f"teacher {url} refused the token (HTTP {status}); set {_token_hint(url)}") from error
    if status == 404:
        raise TeacherError(
            f"teacher {url} has no such route or model (HTTP 404: {message}); check the URL "
            "(TGI: http://host:port, OpenAI-compatible: http://host:port/v1) and --api"
        ) from error
    if status not in _RETRY_STATUS and status < 500:
        raise TeacherError(f"teacher {url} answered HTTP {status}: {message}") from error
    return Failure(f"http_{status}", f"HTTP {status}: {message}", _retry_after(response))
