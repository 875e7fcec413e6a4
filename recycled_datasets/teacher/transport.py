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
garbled bodies (not UTF-8, not JSON, a bad gzip stream, fields of the wrong type) are worth a retry; a request
the server refuses for good (422, 400, 413) raises :class:`~recycled_datasets.errors.Rejected`; wrong routes,
refused tokens, redirect loops and anything else raise :class:`~recycled_datasets.errors.TeacherError` (its
cause kept for ``--debug``), so no reply of a server is ever a traceback.

One attempt has one deadline, ``timeout`` seconds from its start, however the server sends its answer (a body
trickled one byte at a time included): the client's own timeouts only bound each read.

Credentials in a URL (``http://user:password@host/v1``) are taken out of it (:func:`split_credentials`): the
URL is stored, logged and shown without them, and they go to that server as basic authentication only
(a bearer token, when one is set, takes their place).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recycled_datasets.errors import ConfigError, RecycledError, Rejected, TeacherError
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
        return wait if retry_after is None else max(wait, min(retry_after, self.cap))


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
    if token or not is_hf_endpoint(url):
        return token or None
    from huggingface_hub import get_token

    return get_token()


def _token_hint(url: str) -> str:
    return f"${TOKEN_ENV} or $HF_TOKEN" if is_hf_endpoint(url) else f"${TOKEN_ENV}"


def _connection_pool(token: str | None, basic: str | None = None, **options: Any) -> Any:
    """An ``httpx2.AsyncClient`` that sets each request's Authorization itself (bearer ``token``, else basic
    ``basic``: ``user:password``), so nothing can add the user's HF token; httpx drops it on a cross-host redirect."""
    import httpx2

    def authorize(request: Any) -> Any:
        request.headers.pop("authorization", None)
        if token:
            request.headers["authorization"] = f"Bearer {token}"
        elif basic:
            request.headers["authorization"] = "Basic " + base64.b64encode(basic.encode("utf-8")).decode("ascii")
        return request

    return httpx2.AsyncClient(auth=authorize, follow_redirects=True, timeout=None, **options)


def split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its ``user:password@`` part, and that part (``user:password``, percent-decoded), if any."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    plain = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return plain, f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"


def _check_url(url: str) -> None:
    """A ConfigError, masked, for a URL that no request could be sent to (``http://[::1``, port 99999)."""
    from recycled_datasets.secrets import mask

    shown = mask(url)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"teacher URL {shown!r} must start with http:// or https://")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
        host = parts.hostname
    except ValueError as e:
        raise ConfigError(f"teacher URL {shown!r} is malformed ({e}); write it as http://host:port/v1") from e
    if not host or any(c.isspace() for c in url) or port == 0:
        raise ConfigError(
            f"teacher URL {shown!r} is malformed (no host, a space or port 0); write it as http://host:port/v1"
        )


def split_urls(teacher: str) -> list[str]:
    """The teacher URLs of ``--teacher`` (comma-separated), each checked; credentials in them are kept."""
    urls = [u.strip().rstrip("/") for u in teacher.split(",") if u.strip()]
    for url in urls:
        _check_url(url)
    if not urls:
        raise ConfigError("no teacher URL given")
    return urls


def _root(url: str) -> str:
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _inference_client(url: str, http: Any, *, timeout: float) -> Any:
    """An ``AsyncInferenceClient`` for ``url`` sending through our pool ``http``. Given no token the Hub client
    looks up the user's own (``token=False`` is refused): it gets a stand-in, and the pool sets the header."""
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


async def _within(answer: Awaitable[Any], limit: float, error: Callable[[str], Exception]) -> Any:
    # One deadline for the whole answer, not per read: a server trickling its body cannot hold the run.
    try:
        return await asyncio.wait_for(answer, limit)
    except TimeoutError as e:
        raise error(f"no answer within {limit:g} s") from e


async def _get(http: Any, url: str, timeout: float) -> Any:
    import httpx2

    limit = min(timeout, 30.0)
    return await _within(http.get(url, timeout=limit), limit, httpx2.ReadTimeout)


class NotReady(TeacherError):
    """A teacher server did not answer its health check within the wait (``--wait-ready``)."""


async def wait_healthy(
    http: Any,
    url: str,
    *,
    health_timeout: float,
    timeout: float,
    warn: bool = True,
    seen: dict[str, str] | None = None,
) -> None:
    """Wait until the server at ``url`` answers ``/health`` (or, without one, ``/v1/models``) with 200; raise
    :class:`NotReady` after ``health_timeout`` seconds. ``warn``: say once, as a warning, that it waits (else at
    info level); ``seen``: where its latest failure is kept, under ``url``, while it waits."""
    import httpx2

    deadline = time.monotonic() + health_timeout
    root, last, delay = _root(url), "no answer yet", 0.25
    while True:
        try:
            response = await _get(http, f"{root}/health", timeout)
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
        except httpx2.TooManyRedirects as e:
            raise TeacherError(f"teacher {url} redirects in a loop ({e}); check the URL") from e
        except httpx2.DecodingError as e:
            last = f"an unreadable answer ({e})"
        if seen is not None:
            seen[url] = last
        if time.monotonic() + delay > deadline:
            raise NotReady(
                f"teacher {url} is not ready after {health_timeout:.0f} s (last: {last}); "
                "check that the server is running and the URL is right"
            )
        if delay == 0.25 and warn:  # once, as a warning: --quiet still says why, and for how long at most
            logger.warning(
                "teacher %s does not answer yet (%s); waiting up to %.0f s for it (reflect --wait-ready SECONDS)",
                url,
                last,
                health_timeout,
            )
        else:
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
            data = response.json().get("data") or []
        except (TypeError, ValueError, AttributeError):  # not JSON (ValueError covers bytes that are not UTF-8)
            data = None
        if isinstance(data, list) and all(isinstance(m, dict) for m in data):
            models = [m for m in data if isinstance(m.get("id", ""), str)]
        else:
            logger.warning("%s/v1/models is not a list of model objects; ignoring it", root)
    return info, models


def _count_of(value: Any) -> int | None:
    """A token count as the server gave it, if it is one (a string or a float is no count: ignored)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _reply(text: Any, finish: Any, prompt_tokens: Any, completion_tokens: Any) -> Reply:
    """A :class:`Reply` of fields checked for type; text that cannot be stored is a refusal with its reason."""
    if not isinstance(text, str):
        raise _Malformed(f"the reply text is a {type(text).__name__}, not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Rejected(
            f"the reply is not valid Unicode (a lone surrogate {text[e.start]!r} at character {e.start}); "
            "it cannot be stored"
        ) from e
    return Reply(
        text, finish if isinstance(finish, str) else None, _count_of(prompt_tokens), _count_of(completion_tokens)
    )


class ServedModel:
    """The names one run's replies may give the teacher model: the name sent, the names the server reported at the
    handshake, and the name the first reply gives (a provider that resolves an alias answers ``gpt-4o`` with a
    dated snapshot name: that is the same model). After the first reply, any other name is a switch."""

    def __init__(self, names: Sequence[str]):
        self.names = [n for n in names if n]
        self.asked = self.names[-1] if self.names else ""  # the name sent: new names go in front
        self.answered = False

    def check(self, named: object) -> None:
        if not isinstance(named, str) or not named or not self.names:
            return
        if named not in self.names:
            if self.answered:
                raise TeacherError(
                    f"the teacher server now answers as {named}, not {self.asked}: it changed its model during the "
                    f"run; every answer of {self.asked} so far is stored (none of {named}); restart the server "
                    f"with {self.asked} and rerun, or use another --store for {named}"
                )
            logger.info("the teacher answers as %s (asked for %s): taken as the same model", named, self.asked)
            self.names.insert(0, named)
        self.answered = True


async def send(client: Any, payload: dict[str, Any], *, model: str, served: ServedModel | None = None) -> Reply:
    """One attempt at a prepared request through the Hub client: the chat route or TGI's generate route.

    ``served``: the names this server's model goes by (the name sent, the name it reported at the handshake);
    a reply that names another model raises :class:`TeacherError`, so it is never stored under this one.
    """
    if payload["api"] == "chat":
        settings = {name: payload[name] for name in ("max_tokens", "temperature", "seed")}
        out = await client.chat_completion(payload["messages"], model=model, **settings)
        choices = getattr(out, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            raise _Malformed("the chat completion has no message")
        if served is not None:
            served.check(getattr(out, "model", None))
        usage = getattr(out, "usage", None)
        content, finish = getattr(choices[0].message, "content", None), getattr(choices[0], "finish_reason", None)
        if content is None:
            raise _Malformed("the chat completion has no message content")
        tokens = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        return _reply(content, finish, *tokens)
    settings = {name: payload[name] for name in ("max_new_tokens", "do_sample", "temperature", "seed")}
    out = await client.text_generation(payload["inputs"], details=True, return_full_text=False, **settings)
    if getattr(out, "generated_text", None) is None:
        raise _Malformed("the generation has no generated_text")
    details = getattr(out, "details", None)
    # The details name no prompt length: the count prepare() made stands in for it.
    finish, generated = getattr(details, "finish_reason", None), getattr(details, "generated_tokens", None)
    return _reply(out.generated_text, finish, payload.get("prompt_tokens"), generated)


async def send_within(
    client: Any, payload: dict[str, Any], *, model: str, served: ServedModel | None, timeout: float
) -> Reply:
    """:func:`send` with one deadline for the whole attempt, whatever the server sends and however slowly."""
    from huggingface_hub import InferenceTimeoutError

    return await _within(send(client, payload, model=model, served=served), timeout, InferenceTimeoutError)


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

    if isinstance(error, RecycledError):
        raise error  # already says what to do (a model switch, a refusal of ours)
    if isinstance(error, (InferenceTimeoutError, TimeoutError)):
        return Failure("timeout", f"no answer within {timeout:g} s")
    if isinstance(error, httpx2.TransportError):
        return Failure("connection", f"{type(error).__name__}: {error}")
    if isinstance(error, httpx2.TooManyRedirects):
        raise TeacherError(f"teacher {url} redirects in a loop ({error}); check the URL") from error
    if isinstance(error, UnicodeDecodeError):
        return Failure("malformed", f"unusable answer body (not UTF-8: {error.reason} at byte {error.start})")
    if isinstance(error, httpx2.DecodingError):
        return Failure("malformed", f"unusable answer body (its encoding cannot be decoded: {error})")
    if isinstance(error, (_Malformed, json.JSONDecodeError)):
        return Failure("malformed", f"unusable answer body ({error})")
    if not isinstance(error, (HfHubHTTPError, TextGenerationError)):
        if isinstance(error, (ValueError, TypeError, KeyError, IndexError, AttributeError)):
            # The Hub client could not read the body into a completion: a body of another shape.
            return Failure("malformed", f"unusable answer body ({type(error).__name__}: {error})")
        raise TeacherError(
            f"teacher {url}: an attempt failed in a way srecycle does not know ({type(error).__name__}: "
            f"{_short(str(error), secrets=(token,))}); rerun with --debug to see where, and report it"
        ) from error
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
