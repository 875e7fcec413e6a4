"""A TGI-protocol teacher server for tests and benchmarks, on 127.0.0.1, with fault injection.

It speaks TGI's routes (``/generate``, ``POST /``, ``/info``, ``/health``) and the OpenAI-compatible ones
(``/v1/chat/completions``, ``/v1/models``), answers reflection prompts with deterministic, realistic replies
(markers and all), and can misbehave on purpose: 429 bursts and random 429s, 503s, hanging answers (the client
times out), dropped connections, bodies that are not JSON, and 422 refusals; and, one ``mode`` at a time, the
replies a broken proxy or server sends (:data:`MODES`: bodies that are not UTF-8 or not gzip, a ``content``
that is no string, token counts as strings, a redirect loop, a lone surrogate, a body trickled one byte at a
time, a ``/v1/models`` whose ``data`` is no list of objects) and a model switched half-way. It logs every
generation request by content (prompt text + sampling settings) with what it did, so tests can prove that no
stored answer was paid for twice, and the Authorization header of every request, so tests can prove which
token reached it.

It answers at most ``max_requests`` requests (then 503), every socket read has a timeout, and :meth:`stop`
waits for the serving thread: a test that goes wrong cannot keep it busy or alive.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

OK = "ok"  # a normal answer was delivered
# Reply faults, one per server (``Faults.mode``): what each sends instead of a normal 200 answer.
MODES = {
    "non_utf8": "a 200 whose body is not UTF-8",
    "content_not_str": "a chat answer whose message content is an object",
    "usage_str": "token counts given as strings",
    "redirect_loop": "a redirect to itself, forever",
    "bad_gzip": "a body marked gzip that is not",
    "surrogate": "a reply holding a lone surrogate (\\ud800)",
    "trickle": "the answer's body one byte at a time, slower than any timeout",
    "models_not_list": "a /v1/models whose data is not a list of objects (and no /info)",
}


def content_key(text: str, temperature: float | None, seed: int | None, max_tokens: int | None) -> str:
    """What identifies a generation request's content, whichever route carried it."""
    payload = json.dumps([text, float(temperature or 0.0), seed, max_tokens])
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def payload_content_key(payload: dict[str, Any]) -> str:
    """The same key for a request as the teacher store records it (``AnswerStore.requests``)."""
    if payload["api"] == "chat":
        return content_key(
            payload["messages"][-1]["content"], payload["temperature"], payload["seed"], payload["max_tokens"]
        )
    return content_key(payload["inputs"], payload["temperature"], payload["seed"], payload["max_new_tokens"])


@dataclass
class Faults:
    """What the server does wrong, drawn per generation request (probabilities are exclusive, in this order).

    Attributes:
        burst_429: the first N generation requests get 429 (an overload burst at start).
        p429 / p503 / p_hang / p_drop / p_malformed: chances of 429, 503, an answer after ``hang`` seconds,
            a connection closed without answer, and a 200 whose body is not JSON.
        reject_marker: prompts containing this text are refused with 422 (a validation error).
        latency: seconds before each normal answer, a number or a function of a random generator.
        reply: replaces the reply text: a function of (user text, temperature) returning the reply.
        retry_after: value of the Retry-After header sent with 429/503 (None: no header).
        mode: one of :data:`MODES`, sent instead of every normal answer (None: none).
        trickle: seconds between two bytes of a trickled body (mode ``trickle``); it stops after ``trickle_for``.
        switch_after / switch_to: after that many normal answers the server serves (and names) another model.
    """

    burst_429: int = 0
    p429: float = 0.0
    p503: float = 0.0
    p_hang: float = 0.0
    p_drop: float = 0.0
    p_malformed: float = 0.0
    hang: float = 3.0
    reject_marker: str | None = "PLEASE-REJECT-THIS"
    latency: float | Callable[[random.Random], float] = 0.0
    reply: Callable[[str, float], str] | None = None
    retry_after: str | None = None
    seed: int = 0
    mode: str | None = None
    trickle: float = 0.5
    trickle_for: float = 30.0
    switch_after: int | None = None
    switch_to: str = "fixture/other-model-13b"
    answer_as: str | None = None  # chat replies name the model so (a provider resolving an alias to a snapshot)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}: choose one of {', '.join(MODES)}")


def _field(prompt: str, label: str) -> str:
    match = re.search(rf"\[{label}\]\n(.*?)\n\n", prompt, re.S)
    return match.group(1).strip() if match else prompt[:80]


def realistic_reply(user_text: str, temperature: float) -> str:
    """A teacher-like reply: a critique, then the sections the prompt asks for (deterministic by content)."""
    instruction = _field(user_text, "Instruction")
    digest = hashlib.sha1(user_text.encode("utf-8")).hexdigest()[:8]
    sampled = f" (sample {digest})" if temperature > 0 else ""
    if "[New Instruction]" in user_text:
        return (
            f"Step 1: the instruction '{instruction[:60]}' is vague and asks for little detail; the answer is short "
            "and skips the reasoning.\n\n"
            # A new instruction that does not contain the original whole (the echo gate would refuse it).
            f"[New Instruction] Explain in depth, with two worked examples, how to approach a task like "
            f"'{instruction[:30]}...'{sampled} [End]\n\n"
            f"[New Answer] A complete answer to the harder task about {instruction[:40]} ({digest}): first define "
            "the terms, then work both examples step by step, then summarize the method. [End]"
        )
    return (
        f"The answer to '{instruction[:60]}' lacks detail and misses a key point.\n\n"
        f"[Better Answer] A better, complete answer to {instruction[:60]} ({digest}){sampled}: it covers the key "
        "points in order and checks each one. [End]"
    )


@dataclass
class Event:
    key: str
    route: str
    outcome: str  # ok, 429, 503, hang, drop, malformed, 422
    started: float
    model: str | None = None
    finished: float | None = None


class _Server(ThreadingHTTPServer):
    # The listen backlog is read when the socket opens: the default 5 resets connections in a burst of 32.
    request_queue_size = 512
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up is no server error
            super().handle_error(request, client_address)


class TeacherServer:
    """Start with :meth:`start` (or ``with``); ``url`` is the TGI-style root, ``v1`` the OpenAI-style base."""

    def __init__(
        self,
        *,
        model: str = "fixture/teacher-7b",
        tgi: bool = True,
        health: bool = True,
        max_concurrent_requests: int | None = 8,
        max_input_tokens: int | None = None,
        max_total_tokens: int | None = None,
        faults: Faults | None = None,
        unhealthy_for: float = 0.0,
        max_requests: int = 5000,
        port: int = 0,
    ):
        self.model = model
        self.port = port  # 0: any free one
        self.tgi = tgi
        self.health = health
        self.max_concurrent_requests = max_concurrent_requests
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.faults = faults or Faults()
        self.unhealthy_for = unhealthy_for
        self.max_requests = max_requests
        self.delivered = 0  # normal answers sent
        self.named: Counter[str] = Counter()  # chat answers per model name they gave
        self.requests = 0  # every request, health checks included
        self.authorizations: list[str | None] = []  # the Authorization header of each request, in order
        self.events: list[Event] = []
        self.bodies: list[tuple[str, dict[str, Any]]] = []  # (route, JSON body) of every generation request
        self.latencies: list[float] = []
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._generation_requests = 0
        self._started_at = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> TeacherServer:
        server = _Server(("127.0.0.1", self.port), _handler_for(self))
        self._server = server
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> TeacherServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    # ---- what happened -----------------------------------------------------------------------------------
    def outcomes(self) -> Counter[str]:
        with self._lock:
            return Counter(e.outcome for e in self.events)

    def answered(self) -> Counter[str]:
        """Per content key, how many normal answers were delivered."""
        with self._lock:
            return Counter(e.key for e in self.events if e.outcome == OK)

    def generation_requests(self) -> int:
        with self._lock:
            return len(self.events)

    def reset_log(self) -> None:
        with self._lock:
            self.events.clear()
            self.latencies.clear()

    # ---- behaviour ---------------------------------------------------------------------------------------
    def decide(self, user_text: str) -> str:
        f = self.faults
        with self._lock:
            self._generation_requests += 1
            if f.reject_marker and f.reject_marker in user_text:
                return "422"
            if self.max_input_tokens is not None and len(user_text.split()) > self.max_input_tokens:
                return "422"
            if self._generation_requests <= f.burst_429:
                return "429"
            draw = self._rng.random()
        for outcome, p in (("429", f.p429), ("503", f.p503), ("hang", f.p_hang), ("drop", f.p_drop)):
            if draw < p:
                return outcome
            draw -= p
        if draw < f.p_malformed:
            return "malformed"
        return OK

    def latency(self) -> float:
        value = self.faults.latency
        if callable(value):
            with self._lock:
                return float(value(self._rng))
        return float(value)

    def reply(self, user_text: str, temperature: float, max_tokens: int | None) -> tuple[str, str, int]:
        text = (self.faults.reply or realistic_reply)(user_text, temperature)
        words = text.split(" ")
        if max_tokens is not None and len(words) > max_tokens:
            return " ".join(words[:max_tokens]), "length", max_tokens
        return text, "stop", len(words)


def _handler_for(server: TeacherServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One write per answer, sent at once: headers and body in separate small writes meet Nagle's algorithm
        # and delayed ACKs (40 ms stalls) on loopback.
        wbufsize = 1 << 16
        disable_nagle_algorithm = True
        timeout = 30  # seconds a read may block: a client that went silent frees its thread

        def parse_request(self) -> bool:
            # Counted when the request line and headers are in, before any route sees the request.
            if not super().parse_request():
                return False
            with server._lock:
                server.requests += 1
                server.authorizations.append(self.headers.get("Authorization"))
                over = server.requests > server.max_requests
            if over:
                self.close_connection = True
                self._send(503, {"error": "request budget of the test server exhausted"})
                return False
            return True

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up on this request (its timeout); there is nobody left to answer.
                self.close_connection = True

        def do_GET(self) -> None:
            if self.path == "/health" and server.health:
                loading = time.monotonic() - server._started_at < server.unhealthy_for
                self._send(503 if loading else 200, {} if not loading else {"error": "model is loading"})
            elif self.path == "/info" and server.tgi and server.faults.mode != "models_not_list":
                self._send(
                    200,
                    {
                        "model_id": server.model,
                        "model_sha": "0123abcd",
                        "max_concurrent_requests": server.max_concurrent_requests,
                        "max_input_tokens": server.max_input_tokens,
                        "max_total_tokens": server.max_total_tokens,
                        "version": "fixture",
                    },
                )
            elif self.path == "/fixture/log":  # for a benchmark that runs this server in another process
                with server._lock:
                    events = [[e.started, e.finished, e.outcome] for e in server.events]
                    self._send(200, {"events": events, "latencies": list(server.latencies)})
            elif self.path == "/fixture/reset":
                server.reset_log()
                self._send(200, {})
            elif self.path == "/v1/models":
                data: Any = [{"id": server.model, "object": "model"}]
                if server.faults.mode == "models_not_list":
                    data = [server.model, 3]
                self._send(200, {"object": "list", "data": data})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path.endswith("?loop"):  # mode redirect_loop: round and round, whatever came with it
                self.rfile.read(length)
                self._send(307, b"", {"Location": self.path})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": "body is not JSON"})
                return
            if self.path == "/v1/chat/completions":
                user_text = body["messages"][-1]["content"]
                temperature = float(body.get("temperature") or 0.0)
                seed, max_tokens, model = body.get("seed"), body.get("max_tokens"), body.get("model")
            elif self.path in ("/", "/generate") and server.tgi:
                params = body.get("parameters") or {}
                user_text = body["inputs"]
                temperature = float(params.get("temperature") or 0.0) if params.get("do_sample") else 0.0
                seed, max_tokens, model = params.get("seed"), params.get("max_new_tokens"), None
            else:
                self._send(404, {"error": f"no route {self.path}"})
                return
            key = content_key(user_text, temperature, seed, max_tokens)
            with server._lock:
                server.bodies.append((self.path, body))
            outcome = server.decide(user_text)
            event = Event(key, self.path, outcome, time.monotonic(), model)
            # Only requests that do real work occupy the server; a hanging one stands for an answer lost on the
            # way, whose client has given up (a real server cancels a request whose client left).
            working = outcome == OK
            with server._lock:
                server.events.append(event)
                server.inflight += working
                server.max_inflight = max(server.max_inflight, server.inflight)
                over = server.max_concurrent_requests is not None and server.inflight > server.max_concurrent_requests
            try:
                self._answer(outcome, over, user_text, temperature, max_tokens, event)
            finally:
                with server._lock:
                    if working and event.finished is None:
                        server.inflight -= 1
                    event.finished = event.finished or time.monotonic()

        def _answer(
            self, outcome: str, over: bool, user_text: str, temperature: float, max_tokens: int | None, event: Event
        ) -> None:
            retry_headers = {"Retry-After": server.faults.retry_after} if server.faults.retry_after else None
            if over and outcome == OK:
                event.outcome = "429"
                self._send(429, {"error": "Model is overloaded", "error_type": "overloaded"}, retry_headers)
                return
            if outcome == "422":
                message = "Input validation error: `inputs` must have less tokens than the server allows"
                self._send(422, {"error": message, "error_type": "validation"})
            elif outcome == "429":
                self._send(429, {"error": "Model is overloaded", "error_type": "overloaded"}, retry_headers)
            elif outcome == "503":
                self._send(503, {"error": "Service Unavailable"}, retry_headers)
            elif outcome == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif outcome == "hang":
                time.sleep(server.faults.hang)
                self._send(200, self._body(user_text, temperature, max_tokens))
            elif outcome == "malformed":
                self._send(200, b"<html>502 Bad Gateway from a proxy</html>")
            else:
                delay = server.latency()
                with server._lock:
                    server.latencies.append(delay)
                if delay > 0:
                    time.sleep(delay)
                body = self._body(user_text, temperature, max_tokens)
                # The work is done before the answer leaves: a client that sends its next request the moment
                # this answer arrives must find the slot free.
                with server._lock:
                    server.inflight -= 1
                    event.finished = time.monotonic()
                    server.delivered += 1
                    if server.faults.switch_after is not None and server.delivered >= server.faults.switch_after:
                        server.model = server.faults.switch_to  # the next answers (and /info) name the new one
                if server.faults.mode is not None:
                    event.outcome = server.faults.mode
                    self._fault(server.faults.mode, body)
                else:
                    self._send(200, body)

        def _fault(self, mode: str, body: Any) -> None:
            if mode == "non_utf8":
                self._send(200, b'{"choices": "\xff\xfe\xfa not UTF-8"}')
            elif mode == "bad_gzip":
                self._send(200, b"this is not gzip data at all", {"Content-Encoding": "gzip"})
            elif mode == "redirect_loop":
                self._send(307, b"", {"Location": self.path + "?loop"})
            elif mode == "trickle":
                self._trickle(json.dumps(body).encode("utf-8"))
            elif self.path != "/v1/chat/completions" and isinstance(body, (dict, list)):
                answer = body[0] if isinstance(body, list) else body
                if mode == "usage_str":
                    answer["details"]["generated_tokens"] = str(answer["details"]["generated_tokens"])
                elif mode == "content_not_str":
                    answer["generated_text"] = {"text": answer["generated_text"]}
                elif mode == "surrogate":
                    answer["generated_text"] = answer["generated_text"] + "\ud800"
                self._send(200, body)
            else:
                if mode == "usage_str":
                    body["usage"] = {k: str(v) for k, v in body["usage"].items()}
                elif mode == "content_not_str":
                    body["choices"][0]["message"]["content"] = {"text": body["choices"][0]["message"]["content"]}
                elif mode == "surrogate":
                    body["choices"][0]["message"]["content"] += " \ud800 end"
                self._send(200, body)  # json.dumps writes the lone surrogate as the escape \ud800

        def _trickle(self, data: bytes) -> None:
            """Headers at once, then one byte every ``trickle`` seconds, for at most ``trickle_for`` seconds."""
            stop = time.monotonic() + server.faults.trickle_for
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                for i in range(len(data)):
                    if time.monotonic() > stop:
                        break
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(server.faults.trickle)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it should
            self.close_connection = True

        def _body(self, user_text: str, temperature: float, max_tokens: int | None) -> Any:
            text, finish, n_new = server.reply(user_text, temperature, max_tokens)
            n_prompt = len(user_text.split())
            if self.path == "/v1/chat/completions":
                with server._lock:
                    model = server.model
                    if server.faults.answer_as and model != server.faults.switch_to:
                        model = server.faults.answer_as
                    server.named[model] += 1
                return {
                    "id": "fixture",
                    "object": "chat.completion",
                    "created": 0,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                    ],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new},
                }
            details = {
                "finish_reason": "length" if finish == "length" else "eos_token",
                "generated_tokens": n_new,
                "seed": None,
                "prefill": [],
                "tokens": [],
            }
            answer = {"generated_text": text, "details": details}
            return [answer] if self.path == "/" else answer

    return Handler


@dataclass
class Lognormal:
    """Latencies with a long right tail, like real generation times: median ``median`` s, shape ``sigma``."""

    median: float = 0.15
    sigma: float = 0.6

    def __call__(self, rng: random.Random) -> float:
        import math

        return rng.lognormvariate(math.log(self.median), self.sigma)


# ---- helpers for the tests that run against this server -------------------------------------------------------


def reflect_config(url: str, store: Path, **changes: Any) -> Any:
    """A ``ReflectConfig`` for this server: quick retries and timeouts, no fsync, no progress bar."""
    from recycled_datasets.teacher import ReflectConfig, TeacherClient

    client = {"timeout": 5.0, "health_timeout": 5.0}
    client.update({k: changes.pop(k) for k in list(changes) if k in TeacherClient.__dataclass_fields__})
    values: dict[str, Any] = dict(
        teacher=url,
        store_dir=store,
        client=TeacherClient(**client),
        max_new_tokens=200,
        backoff_base=0.005,
        backoff_max=0.05,
        durable=False,
        progress=False,
    )
    values.update(changes)
    return ReflectConfig(**values)


def stored_count(store: Path) -> int:
    """Answers in the store folder right now, read without a lock while another process may be writing."""
    import sqlite3

    path = store / "answers.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as db:
            return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def kill_once_stored(command: list[str], store: Path, count: int, *, env: dict[str, str]) -> None:
    """Run ``command`` and kill it (SIGKILL) as soon as ``store`` holds ``count`` answers, within two minutes."""
    import signal
    import subprocess

    victim = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 120
    try:
        while stored_count(store) < count:
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no answers stored in time"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=30)


def one_line_cli_error(capsys: Any, args: list[str]) -> str:
    """The error ``srecycle ARGS`` prints, checked to be one line with exit code 2."""
    import pytest

    from recycled_datasets.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _serve_forever() -> None:
    """``python tests/teacher_server.py --concurrency C --median S --sigma X``: serve until killed.

    Prints the root URL on the first line of stdout. Benchmarks run the server in its own process so that
    it does not share an interpreter lock with the client it measures.
    """
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--median", type=float, default=0.15)
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--max-requests", type=int, default=20_000)
    args = parser.parse_args()
    server = TeacherServer(
        max_concurrent_requests=args.concurrency,
        faults=Faults(latency=Lognormal(args.median, args.sigma)),
        max_requests=args.max_requests,
    ).start()
    print(server.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    _serve_forever()
